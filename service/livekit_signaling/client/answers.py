"""What a controller receives for a command, and when it has all of it that it can wait for (no I/O).

The contract has no "done" event: a command answers some participants, and some commands answer
nobody when all goes well (``leave``, ``close_room``, and a ``force_mute`` of microphones that were not
open). So each command has its rule, read from what the service sends (``docs/contract/index.md``):

- an ``error`` to the sender ends every command (the service sends it last);
- ``join``, ``create_new_access_token``, ``request_popout_stream_access_token``: the sender's one answer;
- ``grant_screen_share_permission`` / ``revoke_…``: the sender's ``screen_share_permissions_updated``
  naming every target (else the ``unknown_participants`` error that follows it);
- ``enable_microphone_restrictions`` / ``disable_…``: the sender's own copy of the broadcast (sent to
  everyone the service knows in the room, the sender included once it has joined);
- ``force_mute``: a ``force_muted`` for every target (targets whose microphone was not open get none);
- ``leave``, ``close_room``: nothing but an error.
"""

from __future__ import annotations

import msgspec

from livekit_signaling.schemas.answers import ANSWERS
from livekit_signaling.schemas.commands import (
    Close,
    Command,
    CreateNewAccessToken,
    DisableMicrophoneRestrictions,
    EnableMicrophoneRestrictions,
    ForceMute,
    GrantScreenSharePermission,
    Join,
    Leave,
    RequestPopoutStreamAccessToken,
    RevokeScreenSharePermission,
)
from livekit_signaling.schemas.events import (
    ErrorEvent,
    Event,
    EventEnvelope,
    ForceMuted,
    ScreenSharePermissionsUpdated,
)


class ReceivedEvent(msgspec.Struct, frozen=True):
    """An event as the client received it: its routing key, the ``message_id`` of the command it answers
    (``correlation_id``; None for events nobody's command caused), its own id, and the event."""

    routing_key: str
    correlation_id: str | None
    message_id: str | None
    event: EventEnvelope

    @property
    def room(self) -> str:
        return self.event.room

    @property
    def participant(self) -> str:
        """The recipient."""
        return self.event.participant

    @property
    def payload(self) -> Event:
        return self.event.payload


class Sent(msgspec.Struct, frozen=True):
    """A command the broker confirmed: it is in the service's queue."""

    message_id: str
    room: str


class Answers(msgspec.Struct, frozen=True):
    """The events that answered one command, in the order they arrived. ``complete``: everything the
    command's rule waits for arrived (else the timeout ended the wait)."""

    message_id: str
    sender: str
    events: tuple[ReceivedEvent, ...]
    complete: bool

    def to(self, participant: str) -> list[Event]:
        """The payloads sent to ``participant``."""
        return [received.payload for received in self.events if received.participant == participant]

    @property
    def error(self) -> ErrorEvent | None:
        """The error the sender got, if any."""
        return next((p for p in self.to(self.sender) if isinstance(p, ErrorEvent)), None)


class AnswerWatch:
    """Follows the events of one command as they arrive (``add``) and tells when the command's rule is
    met (``complete``); constant work per event, also for a broadcast to a large room."""

    def __init__(self, command: Command, sender: str) -> None:
        self._command = command
        self._sender = sender
        self._expected = ANSWERS[type(command)][0]
        targets = command.participants if isinstance(command, ForceMute) else []
        #: Targets of a ``force_mute`` not yet told ``force_muted``.
        self._not_muted = set(targets)
        self.complete = isinstance(command, ForceMute) and not self._not_muted

    def add(self, event: EventEnvelope) -> bool:
        """Take one more event of the command; returns ``complete``."""
        if not self.complete:
            self.complete = self._completes(event)
        return self.complete

    def _completes(self, event: EventEnvelope) -> bool:
        payload = event.payload
        to_sender = event.participant == self._sender
        if to_sender and isinstance(payload, ErrorEvent):
            return True
        match self._command:
            case Join() | CreateNewAccessToken() | RequestPopoutStreamAccessToken():
                return to_sender
            case (
                GrantScreenSharePermission(participants=targets)
                | RevokeScreenSharePermission(participants=targets)
            ):
                return (
                    to_sender
                    and isinstance(payload, ScreenSharePermissionsUpdated)
                    and set(payload.participants) >= set(targets)
                )
            case EnableMicrophoneRestrictions() | DisableMicrophoneRestrictions():
                return to_sender and isinstance(payload, self._expected)
            case ForceMute():
                if isinstance(payload, ForceMuted):
                    self._not_muted.discard(event.participant)
                return not self._not_muted
            case Leave() | Close():
                return False
