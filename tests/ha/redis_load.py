"""What the Redis fault tests share (kept out of conftest.py): a steady load whose commands write
state as well as read it, and the figures every fault test prints. The books themselves are
``testkit.load``'s: every command the broker confirmed, every event, their times."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from testkit.load import Books, LoadClient
from testkit.processes import setting_default

#: The service's default, which the tests run with: how long a command waits in place for Redis before
#: it is requeued. Commands caught by a fail-over must be answered within it; how soon is a figure.
TRANSIENT_RETRY_SECONDS = float(setting_default("transient_retry_seconds"))
#: Actions of the steady load that save the room's state every time (each popout token counts one
#: more popout identity in the roster), so each of them waits for WAIT.
WRITES = frozenset({"join", "request_popout_stream_access_token"})
#: After the join, a room's commands alternate: a state write, then a read.
STREAM_ACTIONS = ("request_popout_stream_access_token", "create_new_access_token")


def writes_answered_between(client: LoadClient, start: float, end: float) -> list[str]:
    """State-writing commands whose first answer arrived in (start, end)."""
    commands = client.books.commands
    return [
        message_id
        for message_id, at in client.books.first_answer_times().items()
        if commands[message_id].action in WRITES and start < at < end
    ]


class SteadyLoad:
    """``rooms`` rooms (a number, or their names), each one participant: ``join``, then alternately a
    popout token (a state write) and a token refresh (a read), one command every ``pace`` seconds per
    room, numbered, until ``stop()``. Publishing goes on through any outage: commands pile up in the
    broker, in order."""

    def __init__(self, client: LoadClient, *, rooms: int | Sequence[str] = 6, pace: float = 0.1) -> None:
        self.client = client
        self.rooms = [str(uuid.uuid4()) for _ in range(rooms)] if isinstance(rooms, int) else list(rooms)
        self.pace = pace
        self._stopped = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> SteadyLoad:
        self._tasks = [
            asyncio.create_task(
                self.client.room_stream(room, pace=self.pace, stop=self._stopped, actions=STREAM_ACTIONS)
            )
            for room in self.rooms
        ]
        return self

    async def stop(self) -> None:
        self._stopped.set()
        await asyncio.gather(*self._tasks)


@dataclass
class Figures:
    """What a fault test prints: the books' accounting, the longest answer gap and its own figures."""

    title: str
    books: Books
    fault_at: float

    def lines(self, **extra: object) -> str:
        accounting = self.books.accounting()
        confirmed = accounting.confirmed
        answered = confirmed - len(accounting.missing)
        shown = ", ".join(f"{key}={value}" for key, value in extra.items())
        return (
            f"\n{self.title}: confirmed={confirmed} answered={answered} lost={len(accounting.missing)} "
            f"doubled={len(accounting.duplicated)} reordered rooms={len(accounting.out_of_order)} "
            f"longest answer gap={self.books.longest_gap(since=self.fault_at):.2f} s"
            + (f"; {shown}" if shown else "")
            + f"\n  {accounting.summary()}"
        )
