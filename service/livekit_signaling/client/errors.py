"""What the client raises about a command: the service's error answer, or no (complete) answer in time.

The broker's refusals are the link's (``livekit_signaling.transport.controller``): ``BrokerUnavailable``,
``ExchangeNotFound``, ``NotPermitted``, ``CommandUnroutable``, ``CommandRejected``.
"""

from __future__ import annotations

from livekit_signaling.client.answers import Answers
from livekit_signaling.schemas.events import ErrorCode, ErrorEvent


class CommandError(Exception):
    """The service answered the sender with an ``error``. ``answers`` holds every event of the command
    that arrived, e.g. a ``screen_share_permissions_updated`` for the targets that were known when the
    error is ``unknown_participants``."""

    def __init__(self, error: ErrorEvent, answers: Answers) -> None:
        detail = f": {error.detail}" if error.detail else ""
        unknown = f" ({', '.join(error.participants)})" if error.participants else ""
        super().__init__(f"{error.error}{unknown}{detail}")
        self.error = error
        self.answers = answers

    @property
    def code(self) -> ErrorCode:
        return self.error.error

    @property
    def message_id(self) -> str:
        return self.answers.message_id


class CommandTimeout(TimeoutError):
    """No complete answer within the timeout.

    ``confirmed`` False: the broker did not confirm the command in time (no node, or no queue majority);
    it may have it or not. True: the service has it, but its answer did not arrive (the service is not
    consuming, it is slower than the timeout, or the answer was published while the client was
    reconnecting and so was not seen). Sending it again with the same ``message_id`` is safe within the
    service's ``DEDUP_WINDOW_SECONDS`` (600 s by default): the service runs it at most once, and the
    answer, if it comes, answers the retry too. A command the service already answered is not answered
    again, though: when that answer was lost, only a new ``message_id`` brings one (every command is
    idempotent in effect).
    """

    def __init__(self, message_id: str, *, confirmed: bool, answers: Answers | None = None) -> None:
        what = "no complete answer" if confirmed else "the broker did not confirm the command"
        super().__init__(f"{what} in time (message_id {message_id})")
        self.message_id = message_id
        self.confirmed = confirmed
        self.answers = answers
