"""The one place where bytes become typed values and typed values become bytes.

Encoders and decoders are built once: msgspec compiles a decoder per type on construction, and this
runs on every message.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from livekit_signaling.schemas.commands import Command, Envelope, Kind, Role
from livekit_signaling.schemas.events import EventEnvelope

#: A command body larger than this is refused before it is parsed.
MAX_BODY_BYTES = 64 * 1024

_envelope_decoder = msgspec.json.Decoder(Envelope)
_command_decoder: msgspec.json.Decoder[Command] = msgspec.json.Decoder(Command)
_event_decoder = msgspec.json.Decoder(EventEnvelope)
_encoder = msgspec.json.Encoder()


class MalformedEnvelope(ValueError):
    """The body is not an envelope; there is nobody to tell, so it is dead-lettered with this reason."""


class InvalidPayload(ValueError):
    """The envelope is fine but its payload is not a command; its sender gets ``invalid_command``."""


def decode_envelope(body: bytes, *, max_bytes: int = MAX_BODY_BYTES) -> Envelope:
    if len(body) > max_bytes:
        raise MalformedEnvelope(f"body of {len(body)} bytes exceeds the limit of {max_bytes}")
    try:
        return _envelope_decoder.decode(body)
    except msgspec.DecodeError as error:  # ValidationError is a DecodeError
        raise MalformedEnvelope(str(error)) from None


def decode_command(payload: msgspec.Raw) -> Command:
    try:
        return _command_decoder.decode(payload)
    except msgspec.DecodeError as error:
        raise InvalidPayload(str(error)) from None


class MalformedEvent(ValueError):
    """A body on the event exchange that is not an event this service publishes."""


def decode_event(body: bytes) -> EventEnvelope:
    """An event as a controller reads it (the dev console does)."""
    try:
        return _event_decoder.decode(body)
    except msgspec.DecodeError as error:
        raise MalformedEvent(str(error)) from None


class _Addressed(msgspec.Struct):
    """Only the room of an envelope, read leniently: enough to route a body that may be invalid."""

    room: Annotated[str, msgspec.Meta(min_length=1)]


_addressed_decoder = msgspec.json.Decoder(_Addressed)


def envelope_room(body: bytes) -> str:
    """The ``room`` of a JSON object that need not be a valid envelope otherwise: the dev console publishes
    such bodies on purpose, so that a developer sees them dead-lettered. MalformedEnvelope without one."""
    try:
        return _addressed_decoder.decode(body).room
    except msgspec.DecodeError as error:
        raise MalformedEnvelope(str(error)) from None


def encode(value: object) -> bytes:
    return _encoder.encode(value)


def encode_command(room: str, participant: str, command: Command, *, role: Role, kind: Kind) -> bytes:
    """A controller's command as published, checked as the service will check it: ``MalformedEnvelope``
    for ids the service would dead-letter, ``InvalidPayload`` for a payload it would refuse
    (``msgspec`` does not validate a Struct built in code)."""
    envelope = Envelope(
        room=room, participant=participant, role=role, kind=kind, payload=msgspec.Raw(encode(command))
    )
    body = encode(envelope)
    decode_command(decode_envelope(body).payload)
    return body


def encode_event(event: EventEnvelope) -> bytes:
    return _encoder.encode(event)


#: What replaces an access token in a copy of an event that is kept (a dead letter).
REDACTED = "[redacted]"


def redact_tokens(event_body: bytes) -> bytes:
    """An encoded event with the value of every ``token`` field (``join_success`` credentials,
    ``credentials``, ``popout_stream_access_token``) replaced: a LiveKit token is a bearer credential
    for its room, and a dead-letter queue is readable by people the participant is not."""

    def redact(value: object) -> object:
        if isinstance(value, dict):
            return {key: REDACTED if key == "token" else redact(item) for key, item in value.items()}
        if isinstance(value, list):
            return [redact(item) for item in value]
        return value

    return _encoder.encode(redact(msgspec.json.decode(event_body)))
