"""Load that keeps books: a controller and an observer in one robust connection (``LoadClient``) that
publishes numbered commands per room with publisher confirms, retries what the broker did not confirm,
and records every event the service answered with, surviving broker restarts and node failures. The
books (``Books``) then count every confirmed command: answered exactly once, lost, doubled, reordered
within its room, and the longest times without an answer. The fault tests of tests/reliability and
tests/ha run on it."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from livekit_signaling.schemas.routing import EVERY_EVENT, command_routing_key
from livekit_signaling.transport.amqp import REASON_HEADER
from livekit_signaling.transport.brokers import connect_failover
from testkit.amqp import ReceivedEvent, encode_command
from testkit.processes import AMQP_URL, Names, ServiceProcess

#: What a room's stream sends after its join, unless told otherwise: token refreshes, which read the
#: room's state and write nothing.
REFRESHES = ("create_new_access_token",)


# -- the books ---------------------------------------------------------------------------------------


@dataclass
class Command:
    message_id: str
    room: str
    participant: str
    number: int  # position in its room's stream (0 = the join)
    action: str
    confirmed: bool = False
    attempts: int = 0
    confirmed_at: float | None = None
    #: Why attempts failed, by exception type (``DeliveryError``: nacked; ``TimeoutError``: no confirm
    #: within ``publish_once``'s bound; connection errors while the client reconnects).
    failures: Counter[str] = field(default_factory=Counter)


@dataclass
class Books:
    commands: dict[str, Command] = field(default_factory=dict)
    events: list[ReceivedEvent] = field(default_factory=list)

    def confirmed(self) -> list[Command]:
        return [c for c in self.commands.values() if c.confirmed]

    def answers(self) -> dict[str, list[ReceivedEvent]]:
        """Per command, its distinct answers (events with distinct AMQP message ids)."""
        by_command: dict[str, list[ReceivedEvent]] = defaultdict(list)
        seen: set[str] = set()
        for event in self.events:
            if event.correlation_id in self.commands:
                if event.message_id is not None and event.message_id in seen:
                    continue
                if event.message_id is not None:
                    seen.add(event.message_id)
                by_command[event.correlation_id].append(event)
        return by_command

    def copies(self) -> int:
        """Events the service published more than once (same event id: a command run twice)."""
        ids = Counter(e.message_id for e in self.events if e.message_id is not None)
        return sum(count - 1 for count in ids.values())

    def describe(self, message_ids: Iterable[str], *, since: float = 0.0) -> list[str]:
        """One line per command: room, number, attempts, confirm time and its answers' times."""
        answers = self.answers()
        lines = []
        for message_id in message_ids:
            c = self.commands[message_id]
            times = [
                f"{e.received_at - since:.2f}{'R' if e.redelivered else ''}"
                for e in answers.get(message_id, [])
            ]
            confirmed = f"{c.confirmed_at - since:.2f}" if c.confirmed_at else "-"
            lines.append(
                f"{message_id} room={c.room[:8]} n={c.number} attempts={c.attempts} "
                f"confirmed@{confirmed} answers@{times}"
            )
        return lines

    def answer_gaps(self, count: int = 3, *, per_room: bool = False) -> list[tuple[float, float]]:
        """The ``count`` longest times between two consecutive first answers to commands (how long the
        answers stopped), longest first, each with the time it began. ``per_room``: between answers of
        the same room, which also shows an outage of some partitions while others still answer."""
        firsts: dict[str, list[float]] = defaultdict(list)
        for message_id, events in self.answers().items():
            firsts[self.commands[message_id].room if per_room else ""].append(events[0].received_at)
        gaps = [
            (later - earlier, earlier)
            for times in firsts.values()
            for earlier, later in itertools.pairwise(sorted(times))
        ]
        return sorted(gaps, reverse=True)[:count]

    def first_answer_times(self) -> dict[str, float]:
        """Per answered command, when its first answer arrived."""
        return {message_id: events[0].received_at for message_id, events in self.answers().items()}

    def longest_gap(self, *, since: float) -> float:
        """The longest time without any answer, from ``since`` to the last answer."""
        times = sorted(t for t in self.first_answer_times().values() if t >= since)
        points = [since, *times]
        return max((later - earlier for earlier, later in itertools.pairwise(points)), default=0.0)

    def accounting(self, *, returned_by_broker: Iterable[str] = ()) -> Accounting:
        """``returned_by_broker``: commands the service had started when the broker went away (it
        abandons them, since it can no longer acknowledge them); a quorum queue may deliver them again
        after the room's later commands (docs/guarantees.md, "Per-room order"), so they are left out of
        the order check. They must still be answered exactly once."""
        answers = self.answers()
        exempt = set(returned_by_broker)
        confirmed = self.confirmed()
        missing = [c.message_id for c in confirmed if not answers.get(c.message_id)]
        duplicated = {
            c.message_id: len(answers[c.message_id]) for c in confirmed if len(answers[c.message_id]) > 1
        }
        # Order: per room, the first answers of the confirmed commands, in arrival order, must carry
        # increasing numbers.
        out_of_order: list[tuple[str, list[int]]] = []
        by_room: dict[str, list[int]] = defaultdict(list)
        seen: set[str] = set()
        for event in self.events:
            command = self.commands.get(event.correlation_id or "")
            if (
                command is None
                or not command.confirmed
                or command.message_id in seen
                or command.message_id in exempt
            ):
                continue
            seen.add(command.message_id)
            by_room[command.room].append(command.number)
        for room, numbers in by_room.items():
            if numbers != sorted(numbers):
                out_of_order.append((room, numbers))
        wrong_room = [
            e
            for e in self.events
            if e.correlation_id in self.commands and e.room != self.commands[e.correlation_id].room
        ]
        outcomes = Counter(e.payload.get("error") or e.message for e in self.events)
        return Accounting(
            published=len(self.commands),
            confirmed=len(confirmed),
            publish_attempts=sum(c.attempts for c in self.commands.values()),
            events=len(self.events),
            missing=missing,
            duplicated=duplicated,
            out_of_order=out_of_order,
            wrong_room=len(wrong_room),
            outcomes=dict(outcomes),
            unrelated_events=len([e for e in self.events if e.correlation_id not in self.commands]),
            copies=self.copies(),
        )


@dataclass
class Accounting:
    published: int
    confirmed: int
    publish_attempts: int
    events: int
    missing: list[str]
    duplicated: dict[str, int]
    out_of_order: list[tuple[str, list[int]]]
    wrong_room: int
    outcomes: dict[str, int]
    unrelated_events: int
    copies: int

    def summary(self) -> str:
        return (
            f"commands published={self.published} confirmed={self.confirmed} "
            f"publish attempts={self.publish_attempts} events={self.events} "
            f"missing={len(self.missing)} duplicated={len(self.duplicated)} same-id copies={self.copies} "
            f"out-of-order rooms={len(self.out_of_order)} wrong-room={self.wrong_room} "
            f"outcomes={self.outcomes}"
        )

    def assert_exactly_once_in_order(self, *, every_publish_confirmed: bool = True) -> None:
        """Every confirmed command answered once, in its room's order. ``every_publish_confirmed``:
        also that no command stayed unconfirmed (its retries ran out); a fault test whose broker cannot
        confirm for long sets it False, and such commands are then neither counted nor checked."""
        if every_publish_confirmed:
            assert self.confirmed == self.published, self.summary()
        assert not self.missing, f"{len(self.missing)} confirmed commands never answered; {self.summary()}"
        assert not self.duplicated, f"answered more than once: {self.duplicated}; {self.summary()}"
        assert not self.out_of_order, f"per-room order broken: {self.out_of_order[:3]}; {self.summary()}"
        assert self.wrong_room == 0, self.summary()


# -- the client --------------------------------------------------------------------------------------


class LoadClient:
    """A controller and an observer in one robust connection.

    The observer queue is durable, classic, uuid-named and not exclusive, so that it and the events in it
    survive a broker restart; deliveries are acknowledged after they are recorded, and copies the broker
    redelivers after a reconnect are recognised by the event's own message id (the service gives every
    event publish a fresh one, so a second answer from the service is still counted as one)."""

    def __init__(
        self,
        names: Names,
        *,
        name: str = "reliability-client",
        urls: Sequence[str] = (AMQP_URL,),
        observer_arguments: dict[str, Any] | None = None,
    ) -> None:
        self.names = names
        self.name = name
        #: Nodes of the broker, the first that answers first (the client moves on when one goes away).
        self.urls = tuple(urls)
        self.observer_arguments = observer_arguments or {"x-queue-type": "classic"}
        self.books = Books()
        self.dead_letters: list[AbstractIncomingMessage] = []
        self._seen_event_ids: set[str] = set()
        self._changed = asyncio.Event()
        self.observer_queue_name = f"{names.prefix}.observer.{uuid.uuid4().hex[:8]}"
        self.reconnects = 0

    async def __aenter__(self) -> LoadClient:
        self.connection = await connect_failover(
            self.urls, client_properties={"connection_name": self.name}, reconnect_interval=0.5
        )
        self.connection.reconnect_callbacks.add(self._on_reconnect)
        self.channel = await self.connection.channel(publisher_confirms=True)
        self.commands = await self.channel.declare_exchange(
            self.names.command_exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        self.observer_channel = await self.connection.channel()
        await self.observer_channel.set_qos(prefetch_count=500)
        events = await self.observer_channel.declare_exchange(
            self.names.event_exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        self.observer = await self.observer_channel.declare_queue(
            self.observer_queue_name, durable=True, arguments=self.observer_arguments
        )
        await self.observer.bind(events, routing_key=EVERY_EVENT)
        await self.observer.consume(self._on_event)
        self._events_exchange = events
        return self

    async def __aexit__(self, *_: object) -> None:
        with contextlib.suppress(Exception):
            await self.observer_channel.queue_delete(self.observer_queue_name)
        with contextlib.suppress(Exception):
            await self.connection.close()

    def _on_reconnect(self, *_: object) -> None:
        self.reconnects += 1

    async def _on_event(self, message: AbstractIncomingMessage) -> None:
        """Record every publish of the service once: a first delivery (``redelivered`` unset) is a
        publish; a redelivery to this observer (after a reconnect) is recorded only if its first delivery
        never was. Copies the service published twice (same event message id) are kept: the books count
        them separately from distinct answers."""
        event_id = message.message_id
        if not message.redelivered or event_id is None or event_id not in self._seen_event_ids:
            if event_id is not None:
                self._seen_event_ids.add(event_id)
            self.books.events.append(ReceivedEvent.of(message))
            self._changed.set()
        with contextlib.suppress(Exception):
            await message.ack()

    # -- publishing ------------------------------------------------------------------------------------

    async def publish_once(
        self,
        body: bytes,
        routing_key: str,
        *,
        message_id: str | None,
        headers: dict[str, Any] | None = None,
        confirm_timeout: float = 5.0,
    ) -> None:
        await asyncio.wait_for(
            self.commands.publish(
                aio_pika.Message(
                    body,
                    content_type="application/json",
                    message_id=message_id,
                    headers=headers,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key=routing_key,
            ),
            confirm_timeout,
        )

    async def send_command(
        self,
        room: str,
        participant: str,
        number: int,
        payload: dict[str, Any],
        *,
        role: str = "user",
        retry_for: float = 60.0,
    ) -> Command:
        """Publish one command until its confirm arrives (or ``retry_for`` runs out: then unconfirmed).

        A publish whose confirm did not arrive may still have reached the queue; the retry carries the
        same message id, so the service runs it once."""
        message_id = uuid.uuid4().hex
        command = Command(message_id, room, participant, number, str(payload.get("action")))
        self.books.commands[message_id] = command
        body = encode_command(room, participant, payload, role=role)
        deadline = time.monotonic() + retry_for
        while True:
            command.attempts += 1
            try:
                await self.publish_once(body, command_routing_key(room), message_id=message_id)
            except Exception as error:
                command.failures[type(error).__name__] += 1
                if time.monotonic() > deadline:
                    return command
                await asyncio.sleep(0.2)
                continue
            command.confirmed = True
            command.confirmed_at = time.monotonic()
            return command

    async def room_stream(
        self,
        room: str,
        *,
        pace: float,
        commands: int | None = None,
        stop: asyncio.Event | None = None,
        actions: Sequence[str] = REFRESHES,
    ) -> None:
        """``join``, then numbered commands taking ``actions`` in turn, one every ``pace`` seconds, one at a
        time, until ``commands`` were sent or ``stop`` is set."""
        participant = f"p-{uuid.uuid4().hex[:8]}"
        await self.send_command(room, participant, 0, {"action": "join"})
        for number, action in enumerate(itertools.cycle(actions), start=1):
            if (commands is not None and number > commands) or (stop is not None and stop.is_set()):
                return
            await asyncio.sleep(pace)
            await self.send_command(room, participant, number, {"action": action})

    async def steady_load(self, rooms: int, stop: asyncio.Event, *, pace: float) -> None:
        """``rooms`` streams in parallel until ``stop`` is set (a fault test's background load)."""
        await asyncio.gather(
            *(self.room_stream(str(uuid.uuid4()), pace=pace, stop=stop) for _ in range(rooms))
        )

    async def load(self, rooms: int, commands: int, *, pace: float) -> list[str]:
        """``rooms`` streams in parallel of ``commands`` commands each after the join; the rooms."""
        names = [str(uuid.uuid4()) for _ in range(rooms)]
        await asyncio.gather(*(self.room_stream(room, pace=pace, commands=commands) for room in names))
        return names

    # -- waiting ---------------------------------------------------------------------------------------

    async def wait_until(self, predicate: Callable[[], bool], *, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.5))
        return True

    async def wait_answered(self, *, timeout: float = 45.0, quiet: float = 1.5) -> bool:
        """Until every confirmed command has an answer; then ``quiet`` seconds more for duplicates."""

        def all_answered() -> bool:
            answers = self.books.answers()
            return all(answers.get(c.message_id) for c in self.books.confirmed())

        done = await self.wait_until(all_answered, timeout=timeout)
        await asyncio.sleep(quiet)
        return done

    async def answer_to(self, message_id: str, *, timeout: float = 10.0) -> ReceivedEvent:
        def answered() -> bool:
            return any(e.correlation_id == message_id for e in self.books.events)

        assert await self.wait_until(answered, timeout=timeout), f"no answer to {message_id} in {timeout}s"
        return next(e for e in self.books.events if e.correlation_id == message_id)

    async def ask(
        self,
        room: str,
        participant: str,
        payload: dict[str, Any],
        *,
        role: str = "user",
        timeout: float = 10.0,
    ) -> tuple[ReceivedEvent, float]:
        """Send one command and wait for its first answer; returns it and the seconds it took from the
        confirm."""
        command = await self.send_command(room, participant, 0, payload, role=role)
        assert command.confirmed
        event = await self.answer_to(command.message_id, timeout=timeout)
        return event, event.received_at - (command.confirmed_at or 0.0)

    # -- dead letters ----------------------------------------------------------------------------------

    async def watch_dead_letters(self) -> None:
        """Consume the service's dead-letter queue (``names.dead_letter``, declared by the service)."""
        channel = await self.connection.channel()
        queue = await channel.declare_queue(
            self.names.dead_letter, durable=True, arguments={"x-queue-type": "quorum"}
        )
        self._dead_letter_queue = queue

        async def on_dead_letter(message: AbstractIncomingMessage) -> None:
            self.dead_letters.append(message)
            self._changed.set()
            await message.ack()

        await queue.consume(on_dead_letter)

    def dead_letter_reasons(self, width: int = 70) -> list[str]:
        """The distinct reasons the service gave its dead letters (cut to ``width``), sorted."""
        return sorted({str((m.headers or {}).get(REASON_HEADER))[:width] for m in self.dead_letters})


def abandoned_commands(service: ServiceProcess) -> set[str]:
    """Commands the service had started when its broker connection died (it abandons them, the broker
    redelivers them, possibly after later commands of their room: ``Books.accounting``)."""
    return {
        str(record.get("message_id"))
        for record in service.log_records()
        if record["message"].startswith("command abandoned")
    }
