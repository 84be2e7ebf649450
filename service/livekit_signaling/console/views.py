"""What the console and its page say to each other, as msgspec types: the snapshot and the stream's
messages (rooms, events, commands), the answers to the page's POSTs and the requests they carry.

Encoded by msgspec, never assembled as dicts; ``static/console.js`` reads these field names.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from livekit_signaling.schemas.commands import Kind, Role
from livekit_signaling.schemas.events import EventEnvelope

NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]

# -- the emulated LiveKit, as its control route (``GET /_emulator/rooms``) shows it; the page shows it on


class LiveKitTrack(msgspec.Struct, frozen=True):
    sid: str
    source: str
    muted: bool


class LiveKitPermission(msgspec.Struct, frozen=True):
    can_publish: bool
    #: LiveKit's own reading: an empty list means every source (when ``can_publish``).
    can_publish_sources: list[str]
    can_subscribe: bool
    can_publish_data: bool
    hidden: bool


class LiveKitParticipant(msgspec.Struct, frozen=True):
    identity: str
    sid: str
    state: str
    kind: str
    permission: LiveKitPermission
    tracks: list[LiveKitTrack]


class LiveKitRoom(msgspec.Struct, frozen=True):
    name: str
    sid: str
    participants: list[LiveKitParticipant]


def livekit_rooms(answer: object) -> list[LiveKitRoom]:
    """The emulator's rooms as typed values (its control client hands out parsed JSON);
    ``msgspec.ValidationError`` when it answered another shape."""
    return msgspec.convert(answer, list[LiveKitRoom])


# -- rooms: the service's state next to LiveKit's -----------------------------------------------------


class RosterView(msgspec.Struct, frozen=True):
    role: Role
    kind: Kind
    popouts: int


class StateView(msgspec.Struct, frozen=True):
    version: int
    #: None while restrictions are disabled; the unrestricted participants while enabled.
    microphone_restrictions: list[str] | None
    screen_share: dict[str, bool]


class LiveKitRoomView(msgspec.Struct, frozen=True):
    sid: str


class ParticipantRow(msgspec.Struct, frozen=True):
    """One LiveKit identity: a participant of the roster, one of its popouts, or one the roster lacks."""

    identity: str
    roster: RosterView | None
    popout_of: str | None
    livekit: LiveKitParticipant | None
    has_token: bool
    #: The last simulated client action on this identity, with its time.
    outcome: str | None
    #: How what LiveKit holds differs from what the room's state requires (``microphone``,
    #: ``screen_share``, ``camera``, ``unknown_identity``); empty when in line or not connected.
    drift: list[str] = msgspec.field(default_factory=list)
    #: What the reconciler would give it (sorted sources), or None: disconnect it / nothing to give.
    repair_to: list[str] | None = None


class RepairView(msgspec.Struct, frozen=True):
    """A repair the reconciler made in the room."""

    at: float
    identity: str
    drift: list[str]
    #: The sources it was given, or None when it was disconnected.
    sources: list[str] | None


class RoomView(msgspec.Struct, frozen=True):
    name: str
    state: StateView | None
    state_error: str | None
    livekit: LiveKitRoomView | None
    participants: list[ParticipantRow]
    #: The reconciler's latest repairs in this room, newest first.
    repairs: list[RepairView] = msgspec.field(default_factory=list)


class RoomsView(msgspec.Struct, frozen=True):
    """The stream's ``rooms`` message."""

    rooms: list[RoomView]
    livekit_error: str | None
    #: Whether the emulated LiveKit sends its webhooks (off: only reconciliation repairs drift).
    webhooks: bool


# -- traffic: what passed on the broker -----------------------------------------------------------------


class SeenEvent(msgspec.Struct, frozen=True):
    """The stream's ``event`` message."""

    seq: int
    at: float
    routing_key: str
    room: str
    recipient: str
    #: The payload's ``message`` (its variant), ``?`` when the body is not an event.
    message: str
    correlation_id: str | None
    #: The decoded event, or the body as text when it is not one.
    body: EventEnvelope | str


class TraceSpanView(msgspec.Struct, frozen=True):
    """One span of a sent command's trace, as a row of the waterfall."""

    name: str
    #: ``producer``, ``consumer``, ``client``, ``internal``, ``server``.
    kind: str
    #: How many ancestors it has in the trace (the console's own span is 0).
    depth: int
    #: Milliseconds from the start of the trace's first span.
    start_ms: float
    duration_ms: float
    #: Its status description when it failed.
    error: str | None


class SentCommand(msgspec.Struct):
    """The stream's ``command`` message: a command the console published, sent again with each answer
    and whenever a span of its trace ended."""

    message_id: str
    at: float
    routing_key: str
    #: The JSON as published, kept raw: the "send anything" form publishes invalid envelopes on purpose.
    body: msgspec.Raw
    answers: list[SeenEvent] = msgspec.field(default_factory=list)
    #: All answers, also those beyond the ones kept in ``answers``.
    answer_count: int = 0
    #: The trace the console started for it (its ``traceparent``), and that trace's spans so far.
    trace_id: str | None = None
    trace: list[TraceSpanView] = msgspec.field(default_factory=list)


class Snapshot(RoomsView, frozen=True):
    """Everything at once: ``GET /console/snapshot`` and the stream's ``reset``."""

    amqp_connected: bool
    commands: list[SentCommand]
    events: list[SeenEvent]


# -- the page's POSTs -----------------------------------------------------------------------------------


class ClientRequest(msgspec.Struct, frozen=True):
    """``POST /console/clients/<action>``: whose client acts, and on what."""

    room: NonEmpty
    participant: NonEmpty
    source: str | None = None
    track_sid: str = ""


class LiveKitRequest(msgspec.Struct, frozen=True):
    """``POST /console/livekit/<action>``: ``forget`` a room (a LiveKit restart), or switch
    ``webhooks`` on or off."""

    room: str = ""
    enabled: bool = True


class ClientOutcome(msgspec.Struct, frozen=True):
    """Whether LiveKit accepted a simulated client's action, and why."""

    ok: bool
    outcome: str


class ErrorAnswer(msgspec.Struct, frozen=True):
    error: str


class Refused(Exception):
    """A request the console turns down: the HTTP status, and the reason the page shows."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


_encoder = msgspec.json.Encoder()


def to_json(value: object) -> bytes:
    return _encoder.encode(value)
