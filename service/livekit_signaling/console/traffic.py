"""What the console has seen pass: events (newest last), the commands it sent with their correlated
answers, and the latest access token of every LiveKit identity. Bounded, in memory, no I/O."""

from __future__ import annotations

import base64
import binascii
import itertools
import time
from collections import OrderedDict, deque

import msgspec

from livekit_signaling.console.views import SeenEvent, SentCommand
from livekit_signaling.schemas import codec
from livekit_signaling.schemas.events import (
    CredentialsEvent,
    Event,
    EventEnvelope,
    JoinSuccess,
    PopoutStreamAccessToken,
)
from livekit_signaling.schemas.routing import addressee

#: Events kept for the page (and replayed to a page that connects).
EVENT_HISTORY = 500
#: Commands kept, with their answers.
COMMAND_HISTORY = 200
#: Answers kept per command: a restriction in a large room answers every participant.
ANSWERS_PER_COMMAND = 100
#: A token that expires sooner than this is not handed to a simulated client: it asks for a fresh one.
TOKEN_MARGIN_SECONDS = 10.0


class TokenClaims(msgspec.Struct, frozen=True):
    """The claims of an access token the console needs: whose it is and until when."""

    sub: str
    exp: float


def token_claims(token: str) -> TokenClaims | None:
    """The claims of a JWT, *unverified*: only to tell whose token it is and until when (LiveKit, here
    the emulator, verifies it when the client connects). None for anything else."""
    try:
        payload = token.split(".")[1]
        return msgspec.json.decode(
            base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)), type=TokenClaims
        )
    except (IndexError, ValueError, binascii.Error):  # msgspec.DecodeError is a ValueError
        return None


def tokens_in(event: Event) -> list[str]:
    """Access tokens an event hands out: ``join_success`` credentials, ``credentials``, popout tokens."""
    match event:
        case JoinSuccess():
            return [event.credentials.token]
        case CredentialsEvent() | PopoutStreamAccessToken():
            return [event.token]
    return []


def message_of(event: EventEnvelope) -> str:
    """The payload's ``message``: the tag that names its variant."""
    return str(event.payload.__struct_config__.tag)


class Traffic:
    def __init__(self) -> None:
        self.events: deque[SeenEvent] = deque(maxlen=EVENT_HISTORY)
        self.commands: OrderedDict[str, SentCommand] = OrderedDict()
        #: The message id of each kept command's trace.
        self._by_trace: dict[str, str] = {}
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}
        self._seq = itertools.count(1)

    def record_event(
        self, routing_key: str, correlation_id: str | None, body: EventEnvelope | bytes
    ) -> tuple[SeenEvent, SentCommand | None]:
        """Keep an event (decoded, or a body that is not one); returns it and the sent command it
        answers, if any."""
        room, recipient = addressee(routing_key) or ("", "")
        decoded: EventEnvelope | str
        if isinstance(body, EventEnvelope):
            decoded = body
        else:
            try:
                decoded = codec.decode_event(body)
            except codec.MalformedEvent:
                decoded = body.decode(errors="replace")
        event = SeenEvent(
            seq=next(self._seq),
            at=time.time(),
            routing_key=routing_key,
            room=room,
            recipient=recipient,
            message=message_of(decoded) if isinstance(decoded, EventEnvelope) else "?",
            correlation_id=correlation_id,
            body=decoded,
        )
        self.events.append(event)
        if isinstance(decoded, EventEnvelope):
            for token in tokens_in(decoded.payload):
                self._remember_token(room, token)
        command = self.commands.get(correlation_id) if correlation_id else None
        if command is not None:
            command.answer_count += 1
            if len(command.answers) < ANSWERS_PER_COMMAND:
                command.answers.append(event)
        return event, command

    def record_command(
        self, message_id: str, routing_key: str, body: bytes, *, trace_id: str | None = None
    ) -> SentCommand:
        """Keep a command about to be published; ``body`` is JSON (though not necessarily an envelope),
        ``trace_id`` the trace the console started for it."""
        command = SentCommand(
            message_id=message_id,
            at=time.time(),
            routing_key=routing_key,
            body=msgspec.Raw(body),
            trace_id=trace_id,
        )
        self.commands[message_id] = command
        if trace_id is not None:
            self._by_trace[trace_id] = message_id
        while len(self.commands) > COMMAND_HISTORY:
            _, dropped = self.commands.popitem(last=False)
            if dropped.trace_id is not None:
                self._by_trace.pop(dropped.trace_id, None)
        return command

    def command_of_trace(self, trace_id: str) -> SentCommand | None:
        message_id = self._by_trace.get(trace_id)
        return self.commands.get(message_id) if message_id is not None else None

    def _remember_token(self, room: str, token: str) -> None:
        claims = token_claims(token)
        if claims is not None:
            # Keyed by the token's own identity, so a popout token belongs to the popout identity.
            self._tokens[(room, claims.sub)] = (token, claims.exp)

    def token_for(self, room: str, identity: str) -> str | None:
        """The latest token handed to ``identity`` in ``room`` that is still valid for a while."""
        known = self._tokens.get((room, identity))
        if known is None or known[1] < time.time() + TOKEN_MARGIN_SECONDS:
            return None
        return known[0]

    def has_token(self, room: str, identity: str) -> bool:
        return self.token_for(room, identity) is not None

    def forget_room(self, room: str) -> None:
        for key in [key for key in self._tokens if key[0] == room]:
            del self._tokens[key]
