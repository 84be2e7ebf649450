"""The deadline of the command being handled, visible to every LiveKit call it makes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_deadline: ContextVar[float | None] = ContextVar("command_deadline", default=None)


@contextmanager
def command_deadline(seconds: float) -> Iterator[None]:
    """Everything awaited inside (tasks created inside inherit it) must end ``seconds`` from now."""
    token = _deadline.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _deadline.reset(token)


def seconds_left(default: float) -> float:
    """Time left until the current command's deadline, or ``default`` outside of a command."""
    deadline = _deadline.get()
    return default if deadline is None else deadline - time.monotonic()
