"""What the Redis fault tests share (kept out of conftest.py): a steady load whose commands write
state as well as read it, and the figures every fault test prints. The books themselves are the
reliability harness's (``LoadClient``): every command the broker confirmed, every event, their times."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from dataclasses import dataclass

from tests.reliability.harness import Books, LoadClient

#: Actions of the steady load that save the room's state every time (each popout token counts one
#: more popout identity in the roster), so each of them waits for WAIT.
WRITES = frozenset({"join", "request_popout_stream_access_token"})


class SteadyLoad:
    """``rooms`` rooms, each one participant: ``join``, then alternately a popout token (a state
    write) and a token refresh (a read), one command every ``pace`` seconds per room, numbered, until
    ``stop()``. Publishing goes on through any outage: commands pile up in the broker, in order."""

    def __init__(self, client: LoadClient, *, rooms: int = 6, pace: float = 0.1) -> None:
        self.client = client
        self.rooms = [str(uuid.uuid4()) for _ in range(rooms)]
        self.pace = pace
        self._stopped = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> SteadyLoad:
        self._tasks = [asyncio.create_task(self._stream(room)) for room in self.rooms]
        return self

    async def stop(self) -> None:
        self._stopped.set()
        await asyncio.gather(*self._tasks)

    async def _stream(self, room: str) -> None:
        participant = f"p-{uuid.uuid4().hex[:8]}"
        await self.client.send_command(room, participant, 0, {"action": "join"})
        number = 0
        while not self._stopped.is_set():
            await asyncio.sleep(self.pace)
            number += 1
            action = "request_popout_stream_access_token" if number % 2 else "create_new_access_token"
            await self.client.send_command(room, participant, number, {"action": action})


def answer_times(books: Books) -> dict[str, float]:
    """Per answered command, when its first answer arrived."""
    return {message_id: events[0].received_at for message_id, events in books.answers().items()}


def longest_gap(books: Books, *, since: float) -> float:
    """The longest time without any answer, from ``since`` to the last answer."""
    times = sorted(t for t in answer_times(books).values() if t >= since)
    points = [since, *times]
    return max((later - earlier for earlier, later in itertools.pairwise(points)), default=0.0)


@dataclass
class Figures:
    """What a fault test prints: the harness's accounting, the longest answer gap and its own figures."""

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
            f"longest answer gap={longest_gap(self.books, since=self.fault_at):.2f} s"
            + (f"; {shown}" if shown else "")
            + f"\n  {accounting.summary()}"
        )
