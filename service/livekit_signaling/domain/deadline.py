"""The deadline of the command being handled, visible to every LiveKit call it makes."""

from __future__ import annotations

import time
from contextvars import ContextVar, Token

_deadline: ContextVar[float | None] = ContextVar("command_deadline", default=None)


class command_deadline:
    """Everything awaited inside (tasks created inside inherit it) must end ``seconds`` from now. A
    class rather than a ``@contextmanager`` generator: every command enters it."""

    __slots__ = ("_seconds", "_token")

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._token: Token[float | None] | None = None

    def __enter__(self) -> None:
        self._token = _deadline.set(time.monotonic() + self._seconds)

    def __exit__(self, *_: object) -> None:
        if self._token is not None:
            _deadline.reset(self._token)
            self._token = None


def seconds_left(default: float) -> float:
    """Time left until the current command's deadline, or ``default`` outside of a command."""
    deadline = _deadline.get()
    return default if deadline is None else deadline - time.monotonic()
