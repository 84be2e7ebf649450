"""A fault under steady load, and the figures every fault test of tests/ha and tests/partitions prints:
every confirmed command answered exactly once, lost, doubled (answered under two different event ids),
reordered within its room, the longest times without an answer, and the copies that were absorbed on
the way, with where each came from.

Copies are expected under faults, and harmless: RabbitMQ confirms a publish only once it holds it, so
a confirm lost with its connection leaves the publisher not knowing, and it publishes again ("Data
Safety on the Publisher Side" in RabbitMQ's reliability guide: consumers must deduplicate or be
idempotent); a command whose ack was lost is delivered again. The service publishes a command's events
under the same message ids (``<command message_id>:<n>``) every time, so a consumer drops the copy, and
drops a command it already answered itself (``DEDUP_WINDOW_SECONDS``)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from testkit.load import REFRESHES, Accounting, Books, LoadClient, abandoned_commands
from testkit.processes import ServiceProcess

#: A load client's observer queue on a cluster: replicated, and led by the node the client declares it
#: on, so that the books survive the loss of any other node.
REPLICATED_OBSERVER = {"x-queue-type": "quorum", "x-queue-leader-locator": "client-local"}

#: Where a copy of an event came from, read from the service's log lines about its command.
REPUBLISHED = "published again: its confirm was lost with the connection"
RUN_AGAIN = "run again: its delivery was abandoned with its channel, and the broker delivered it again"
DELIVERED_TWICE = "delivered twice to the observer by the broker"


def copy_sources(books: Books, service: ServiceProcess) -> Counter[str]:
    """For every event the observer received more than once under one message id, where the copy came
    from (one of the three above), by the service's log lines of the command that caused it."""
    copies = Counter(e.message_id for e in books.events if e.message_id is not None)
    records: dict[str, list[str]] = {}
    for record in service.log_records():
        if "message_id" in record:
            records.setdefault(str(record["message_id"]), []).append(str(record["message"]))
    sources: Counter[str] = Counter()
    for event_id, count in copies.items():
        if count < 2:
            continue
        lines = records.get(event_id.rpartition(":")[0], [])
        if any(line.startswith("command abandoned") for line in lines):
            source = RUN_AGAIN
        elif any("failed (connection lost)" in line for line in lines):
            source = REPUBLISHED
        else:
            source = DELIVERED_TWICE
        sources[source] += count - 1
    return sources


@dataclass
class Figures:
    books: Accounting
    #: The longest times without any answer, and without an answer in one room (a partition's outage
    #: while the others answer), each with when it began relative to the fault; longest first.
    gaps: list[tuple[float, float]]
    room_gaps: list[tuple[float, float]]
    reconnects: float
    #: Commands delivered again that the service recognised by message id and did not run again.
    commands_dropped: float
    #: Event copies the observer dropped by message id, by where they came from (``copy_sources``).
    copies: Counter[str]
    #: When each answered command's first answer arrived (``time.monotonic()``), in order.
    first_answers: list[float]

    @property
    def gap(self) -> float:
        """The longest time without any answer."""
        return self.gaps[0][0] if self.gaps else 0.0

    @property
    def room_gap(self) -> float:
        """The longest time some room waited for an answer (at least ``gap``)."""
        return self.room_gaps[0][0] if self.room_gaps else 0.0

    @property
    def answered_once(self) -> int:
        return self.books.confirmed - len(self.books.missing) - len(self.books.duplicated)

    @property
    def absorbed(self) -> int:
        """Copies that reached a consumer (the service, or the observer) and were dropped there."""
        return round(self.commands_dropped) + sum(self.copies.values())

    def first_answer_after(self, moment: float) -> float:
        """When the first answer after ``moment`` arrived (infinity: none did)."""
        return next((at for at in self.first_answers if at >= moment), float("inf"))

    def assert_resumed(self, any_room: float, one_room: float) -> None:
        assert self.gap < any_room, self.line()
        assert self.room_gap < one_room, self.line()

    def line(self) -> str:
        b = self.books

        def shown(gaps: list[tuple[float, float]]) -> str:
            return ", ".join(f"{gap:.2f}s at {at:+.1f}s" for gap, at in gaps)

        sources = "; ".join(f"{count} {source}" for source, count in self.copies.items()) or "none"
        return (
            f"confirmed={b.confirmed} answered exactly once={self.answered_once} lost={len(b.missing)} "
            f"doubled={len(b.duplicated)} reordered rooms={len(b.out_of_order)}; copies absorbed "
            f"{self.absorbed} (commands dropped by the service {self.commands_dropped:.0f}, event copies "
            f"dropped by message id: {sources}); longest gaps without an answer: any room "
            f"{shown(self.gaps)}, one room {shown(self.room_gaps)} (from the fault); reconnects "
            f"{self.reconnects:.0f}"
        )

    def row(self, scenario: str, duration: str) -> str:
        """The results table's row (docs/high-availability/partitions.md)."""
        b = self.books
        return (
            f"| {scenario} | {duration} | {b.confirmed:,} | {len(b.missing)} | {len(b.duplicated)} "
            f"| {len(b.out_of_order)} | {self.gap:.1f} s (one room {self.room_gap:.1f} s) | {self.absorbed} |"
        )


async def under_load(
    client: LoadClient,
    service: ServiceProcess,
    fault: Callable[[], Awaitable[None]],
    *,
    after: float,
    rooms: int,
    pace: float,
    actions: Sequence[str] = REFRESHES,
) -> tuple[Figures, float]:
    """Steady load (``rooms`` streams of ``actions``, one command every ``pace`` seconds each); ``fault``
    after 2 s; the load goes on for ``after`` seconds once ``fault`` returned; then every confirmed
    command is accounted for. Returns the figures and when the fault began."""
    stop = asyncio.Event()
    load = asyncio.create_task(client.steady_load(rooms, stop, pace=pace, actions=actions))
    try:
        await asyncio.sleep(2.0)
        fault_began = time.monotonic()
        await fault()
        await asyncio.sleep(after)
    finally:
        stop.set()
        await asyncio.wait_for(load, 120)
    answered = await client.wait_answered(timeout=60)
    books = client.books.accounting(returned_by_broker=abandoned_commands(service))
    gaps = [(gap, began - fault_began) for gap, began in client.books.answer_gaps()]
    room_gaps = [(gap, began - fault_began) for gap, began in client.books.answer_gaps(per_room=True)]
    reconnects = await asyncio.to_thread(service.metric, "livekit_signaling_amqp_reconnects_total")
    dropped = await asyncio.to_thread(service.metric, "livekit_signaling_duplicate_commands_total")
    copies = await asyncio.to_thread(copy_sources, client.books, service)
    firsts = sorted(client.books.first_answer_times().values())
    figures = Figures(books, gaps, room_gaps, reconnects, dropped, copies, firsts)
    assert answered, books.summary()
    return figures, fault_began


def report(title: str, figures: Figures, service: ServiceProcess, extra: str = "") -> None:
    """Print the figures (``pytest -s``), with the service's broker moves and its log file."""
    logs = service.logs().splitlines()
    refused = sum("refused by the broker" in line for line in logs)
    requeued = sum("requeued" in line for line in logs)
    print(
        f"\n{title}: {figures.line()}; {extra}; publishes refused and retried {refused}, requeued {requeued}"
    )
    print("\n".join(line for line in logs if "RabbitMQ node" in line))
    print(f"service log: {service.log_path}")
