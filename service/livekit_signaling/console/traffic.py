"""What the console has seen pass: events (newest last), the commands it sent with their correlated
answers, and the latest access token of every LiveKit identity. Bounded, in memory, no I/O."""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from livekit_signaling.schemas.routing import addressee

#: Events kept for the page (and replayed to a page that connects).
EVENT_HISTORY = 500
#: Commands kept, with their answers.
COMMAND_HISTORY = 200
#: Answers kept per command: a restriction in a large room answers every participant.
ANSWERS_PER_COMMAND = 100
#: A token that expires sooner than this is not handed to a simulated client: it asks for a fresh one.
TOKEN_MARGIN_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class SeenEvent:
    seq: int
    at: float
    routing_key: str
    room: str
    recipient: str
    message: str
    correlation_id: str | None
    #: The decoded JSON body, or the body as text when it is not JSON.
    body: Any

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": self.at,
            "routing_key": self.routing_key,
            "room": self.room,
            "recipient": self.recipient,
            "message": self.message,
            "correlation_id": self.correlation_id,
            "body": self.body,
        }


@dataclass(slots=True)
class SentCommand:
    message_id: str
    at: float
    routing_key: str
    body: Any
    answers: list[SeenEvent] = field(default_factory=list)
    answer_count: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "message_id": self.message_id,
            "at": self.at,
            "routing_key": self.routing_key,
            "body": self.body,
            "answers": [answer.to_json() for answer in self.answers],
            "answer_count": self.answer_count,
        }


def token_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT, *unverified*: only to tell whose token it is and until when (LiveKit, here
    the emulator, verifies it when the client connects)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, binascii.Error):
        return {}
    return claims if isinstance(claims, dict) else {}


def _tokens_in(payload: dict[str, Any]) -> list[str]:
    """Access tokens an event hands out: ``join_success`` credentials, ``credentials``, popout tokens."""
    candidates = [payload.get("token")]
    credentials = payload.get("credentials")
    if isinstance(credentials, dict):
        candidates.append(credentials.get("token"))
    return [token for token in candidates if isinstance(token, str) and token]


class Traffic:
    def __init__(self) -> None:
        self.events: deque[SeenEvent] = deque(maxlen=EVENT_HISTORY)
        self.commands: OrderedDict[str, SentCommand] = OrderedDict()
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}
        self._seq = itertools.count(1)

    def record_event(
        self, routing_key: str, correlation_id: str | None, body: bytes
    ) -> tuple[SeenEvent, SentCommand | None]:
        """Keep an event; returns it and the sent command it answers, if any."""
        room, recipient = addressee(routing_key) or ("", "")
        decoded: Any
        try:
            decoded = json.loads(body)
        except ValueError:
            decoded = body.decode(errors="replace")
        payload = decoded.get("payload") if isinstance(decoded, dict) else None
        payload = payload if isinstance(payload, dict) else {}
        event = SeenEvent(
            seq=next(self._seq),
            at=time.time(),
            routing_key=routing_key,
            room=room,
            recipient=recipient,
            message=str(payload.get("message", "?")),
            correlation_id=correlation_id,
            body=decoded,
        )
        self.events.append(event)
        for token in _tokens_in(payload):
            self._remember_token(room, token)
        command = self.commands.get(correlation_id) if correlation_id else None
        if command is not None:
            command.answer_count += 1
            if len(command.answers) < ANSWERS_PER_COMMAND:
                command.answers.append(event)
        return event, command

    def record_command(self, message_id: str, routing_key: str, body: Any) -> SentCommand:
        command = SentCommand(message_id=message_id, at=time.time(), routing_key=routing_key, body=body)
        self.commands[message_id] = command
        while len(self.commands) > COMMAND_HISTORY:
            self.commands.popitem(last=False)
        return command

    def _remember_token(self, room: str, token: str) -> None:
        claims = token_claims(token)
        identity, expires = claims.get("sub"), claims.get("exp")
        if isinstance(identity, str) and isinstance(expires, int | float):
            # Keyed by the token's own identity, so a popout token belongs to the popout identity.
            self._tokens[(room, identity)] = (token, float(expires))

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
