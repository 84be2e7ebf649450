"""The parts of a room's state are kept encoded (MessagePack) by both stores.

Both stores hand out freshly decoded decisions on every load (roster entries are immutable), so a
handler that changes a loaded state and then fails leaves the stored state untouched; the encoded form
is also several times smaller than live objects.
"""

from __future__ import annotations

import msgspec

from livekit_signaling.domain.state import RoomDecisions, RosterEntry

_encoder = msgspec.msgpack.Encoder()
_decisions_decoder = msgspec.msgpack.Decoder(RoomDecisions)
_entry_decoder = msgspec.msgpack.Decoder(RosterEntry)


def encode_decisions(decisions: RoomDecisions) -> bytes:
    return _encoder.encode(decisions)


def decode_decisions(data: bytes) -> RoomDecisions:
    return _decisions_decoder.decode(data)


def encode_entry(entry: RosterEntry) -> bytes:
    return _encoder.encode(entry)


def decode_entry(data: bytes) -> RosterEntry:
    return _entry_decoder.decode(data)
