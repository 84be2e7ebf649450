"""Room state is kept encoded (MessagePack) by both stores.

Both stores hand out a freshly decoded ``RoomState`` on every load, so a handler that mutates it and then
fails leaves the stored state untouched; the encoded form is also several times smaller than live objects
(issue 6's memory budget).
"""

from __future__ import annotations

import msgspec

from service.domain.state import RoomState

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(RoomState)


def encode_state(state: RoomState) -> bytes:
    return _encoder.encode(state)


def decode_state(data: bytes) -> RoomState:
    return _decoder.decode(data)
