"""The processor's per-room pipeline against a transport whose publisher confirms the test hands out:
a room's next command starts once the previous one's events are on the channel, while records and acks
keep the room's order, whatever order the confirms come back in. (The real broker, restarts and
hand-overs are in tests/reliability and tests/scale.)"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiormq import spec
from aiormq.exceptions import DeliveryError

from livekit_signaling.pipeline.ports import (
    ChannelLost,
    CommandTransport,
    Delivery,
    OutgoingEvent,
    Publication,
    PublishingChannel,
)
from livekit_signaling.pipeline.processor import CommandProcessor
from livekit_signaling.schemas.routing import command_routing_key
from livekit_signaling.store.memory import MemoryStateStore
from livekit_signaling.telemetry.metrics import Metrics
from tests.unit.fakes import FakeLiveKit, fake_handler

ROOM = "room-1"


class FakeChannel:
    def __init__(self) -> None:
        self.is_closed = False


@dataclass
class FakeTransport:
    """Records what the processor publishes, in channel order, and what it settles; confirms are
    futures the test resolves. A delivery is current until the test calls ``lose_deliveries``."""

    channel: FakeChannel = field(default_factory=FakeChannel)
    #: (channel, message id of the command, event) in the order they were handed to a channel.
    published: list[tuple[PublishingChannel, str, OutgoingEvent]] = field(default_factory=list)
    confirms: list[asyncio.Future[None]] = field(default_factory=list)
    acked: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)
    dead: set[int] = field(default_factory=set)
    subscribed_partitions: Sequence[int] = ()
    active_partitions: set[int] = field(default_factory=set)
    is_connected: bool = True
    #: Subscribed partitions without our consumer on the broker (``partitions_not_consumed``).
    unconsumed: list[int] = field(default_factory=list)
    #: Set whenever something was published or settled.
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def until(self, condition: Callable[[], bool], *, timeout: float = 2.0) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                self.changed.clear()
                await self.changed.wait()

    def is_current(self, delivery: Delivery) -> bool:
        return id(delivery) not in self.dead

    def lose_deliveries(self, *deliveries: Delivery) -> None:
        self.dead.update(id(delivery) for delivery in deliveries)

    async def ack(self, delivery: Delivery) -> bool:
        self.acked.append(delivery.message_id or "")
        self.changed.set()
        return True

    async def requeue(self, delivery: Delivery) -> bool:
        self.requeued.append(delivery.message_id or "")
        self.changed.set()
        return True

    async def publishing_channel(self) -> PublishingChannel:
        return self.channel

    def publish_on(self, channel: PublishingChannel, events: Sequence[OutgoingEvent]) -> Publication:
        futures = []
        for event in events:
            self.published.append((channel, event.correlation_id or "", event))
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if channel.is_closed:
                future.set_exception(ChannelLost("channel closed"))
            futures.append(future)
        self.confirms += futures
        self.changed.set()
        return Publication(channel, futures)

    def lose_channel(self) -> None:
        """The publishing channel dies: unconfirmed publishes fail; a new channel takes its place."""
        self.channel.is_closed = True
        for future in self.confirms:
            if not future.done():
                future.set_exception(ChannelLost("channel closed"))
        self.channel = FakeChannel()

    async def wait_connected(self, seconds: float) -> bool:
        return True

    async def dead_letter(self, body: bytes, **_: Any) -> None:
        raise AssertionError("nothing is dead-lettered here")

    async def release(self, partition: int) -> None:
        pass

    async def subscribe(self, partition: int) -> None:
        pass

    async def partitions_not_consumed(self) -> list[int]:
        return list(self.unconsumed)

    def order(self, *, channel: PublishingChannel | None = None) -> list[str]:
        return [command for ch, command, _ in self.published if channel is None or ch is channel]


@pytest.fixture
def store() -> MemoryStateStore:
    return MemoryStateStore(dedup_window_seconds=60, room_idle_seconds=3600)


@pytest.fixture
def transport() -> FakeTransport:
    fake = FakeTransport()
    _: CommandTransport = fake  # the fake satisfies the port the processor is typed against
    return fake


@pytest.fixture
def processor(transport: FakeTransport, store: MemoryStateStore) -> CommandProcessor:
    return processor_of(store, transport)


def processor_of(
    store: MemoryStateStore, transport: FakeTransport, *, livekit: FakeLiveKit | None = None
) -> CommandProcessor:
    """The processor with the real handler on ``store`` and a fake LiveKit, publishing on ``transport``."""
    return CommandProcessor(
        handler=fake_handler(store, livekit=livekit),
        store=store,
        transport=transport,
        metrics=Metrics(),
        command_deadline_seconds=2,
        max_body_bytes=65536,
        delivery_limit=5,
        transient_retry_seconds=1,
    )


def delivery(message_id: str | None = None, *, action: str = "create_new_access_token") -> Delivery:
    body = {"room": ROOM, "participant": "p", "role": "user", "payload": {"action": action}}
    return Delivery(
        body=json.dumps(body).encode(),
        routing_key=command_routing_key(ROOM),
        message_id=message_id or uuid.uuid4().hex,
        partition=0,
        delivery_count=0,
    )


def deliver(processor: CommandProcessor, count: int) -> list[Delivery]:
    """``count`` commands of the room, handed to the processor in order."""
    commands = [delivery() for _ in range(count)]
    for command in commands:
        processor.on_delivery(command)
    return commands


async def settled(processor: CommandProcessor) -> None:
    await processor.drain(2.0)


async def test_the_next_command_starts_before_the_previous_confirms(
    processor: CommandProcessor, transport: FakeTransport
) -> None:
    commands = deliver(processor, 3)
    # All three ran and handed their events over while no confirm has come back.
    await transport.until(lambda: len(transport.published) == 3)
    assert transport.order() == [c.message_id for c in commands]
    assert not any(f.done() for f in transport.confirms)
    assert transport.acked == []
    for future in transport.confirms:
        future.set_result(None)
    await transport.until(lambda: len(transport.acked) == 3)
    assert transport.acked == [c.message_id for c in commands]


async def test_acks_and_records_keep_the_room_order_when_confirms_come_back_out_of_order(
    processor: CommandProcessor, transport: FakeTransport, store: MemoryStateStore
) -> None:
    first, second, third = commands = deliver(processor, 3)
    await transport.until(lambda: len(transport.confirms) == 3)
    transport.confirms[2].set_result(None)
    transport.confirms[1].set_result(None)
    await asyncio.sleep(0.05)
    # Confirmed, but the room's first command is not: a replica dying now must leave the later ones to
    # be redelivered and run after it, not recorded as done.
    assert transport.acked == []
    assert not await store.is_processed(second.message_id or "")
    assert not await store.is_processed(third.message_id or "")
    transport.confirms[0].set_result(None)
    await transport.until(lambda: len(transport.acked) == 3)
    assert transport.acked == [first.message_id, second.message_id, third.message_id]
    assert all([await store.is_processed(c.message_id or "") for c in commands])


async def test_events_lost_with_the_channel_go_out_again_in_the_room_order(
    processor: CommandProcessor, transport: FakeTransport
) -> None:
    first, second = deliver(processor, 2)
    await transport.until(lambda: len(transport.published) == 2)
    lost = transport.channel
    transport.lose_channel()
    # A command arriving now must not publish on the new channel ahead of the two lost ones.
    third = delivery()
    processor.on_delivery(third)
    await transport.until(lambda: len(transport.order(channel=transport.channel)) >= 1)
    for _ in range(3):  # each publish on the new channel is confirmed as it comes
        await transport.until(lambda: any(not f.done() for f in transport.confirms))
        next(f for f in transport.confirms if not f.done()).set_result(None)
    await transport.until(lambda: len(transport.acked) == 3)
    assert transport.order(channel=lost) == [first.message_id, second.message_id]
    assert transport.order(channel=transport.channel) == [
        first.message_id,
        second.message_id,
        third.message_id,
    ]
    assert transport.acked == [first.message_id, second.message_id, third.message_id]


async def test_a_copy_of_a_command_in_flight_is_not_run_again(
    processor: CommandProcessor, transport: FakeTransport
) -> None:
    original, copy = delivery("same-id"), delivery("same-id")
    processor.on_delivery(original)
    processor.on_delivery(copy)
    await transport.until(lambda: len(transport.published) == 1)
    await asyncio.sleep(0.05)
    assert len(transport.published) == 1  # the copy waits for the original's outcome
    transport.confirms[0].set_result(None)
    await transport.until(lambda: len(transport.acked) == 2)
    assert len(transport.published) == 1


async def test_commands_whose_channel_closed_are_neither_recorded_nor_acknowledged(
    processor: CommandProcessor, transport: FakeTransport, store: MemoryStateStore
) -> None:
    first, second = deliver(processor, 2)
    await transport.until(lambda: len(transport.published) == 2)
    transport.confirms[1].set_result(None)
    # Their consuming channel closes (broker restart): the broker hands both out again, in order.
    transport.lose_deliveries(first, second)
    transport.lose_channel()
    await settled(processor)
    assert transport.acked == []
    assert not await store.is_processed(first.message_id or "")
    assert not await store.is_processed(second.message_id or "")


async def test_a_nacked_event_requeues_its_command_after_the_previous_one_settled(
    processor: CommandProcessor, transport: FakeTransport
) -> None:
    first, second = deliver(processor, 2)
    await transport.until(lambda: len(transport.confirms) == 2)
    transport.confirms[1].set_exception(DeliveryError(None, spec.Basic.Nack()))
    await asyncio.sleep(0.05)
    assert transport.requeued == []
    transport.confirms[0].set_result(None)
    await transport.until(lambda: transport.requeued == [second.message_id])
    assert transport.acked == [first.message_id]


async def test_a_publish_cancelled_with_its_channel_is_published_again(
    processor: CommandProcessor, transport: FakeTransport
) -> None:
    """aiormq may cancel a pending publish when its channel closes: that is a lost event, not a
    cancelled command (which would be left neither acknowledged nor requeued)."""
    command = delivery()
    processor.on_delivery(command)
    await transport.until(lambda: len(transport.confirms) == 1)
    transport.channel.is_closed = True
    transport.confirms[0].cancel()
    transport.channel = FakeChannel()
    await transport.until(lambda: len(transport.confirms) == 2)
    transport.confirms[1].set_result(None)
    await transport.until(lambda: transport.acked == [command.message_id])


async def test_a_fenced_write_is_retried_on_the_room_read_again(
    transport: FakeTransport,
) -> None:
    """The sender's entry comes with the duplicate check (one round trip); when its write is fenced
    (another replica wrote the room meanwhile), the retry must read the room again, or it would be
    fenced for ever."""
    store = MemoryStateStore(dedup_window_seconds=60, room_idle_seconds=3600)
    processor = processor_of(store, transport)
    first = delivery(action="join")
    processor.on_delivery(first)
    await transport.until(lambda: len(transport.published) == 1)
    transport.confirms[0].set_result(None)
    await transport.until(lambda: len(transport.acked) == 1)
    # A participant whose entry changes (a new role), while another writer bumps the room's version
    # between the read and the write.
    real_load_unless_processed = store.load_unless_processed

    async def raced(message_id: str, room: str, participants: Any) -> Any:
        loaded = await real_load_unless_processed(message_id, room, participants)
        other = await store.load(room)
        other.participants["someone else"] = other.participants["p"]
        await store.save_entry(room, other, "someone else")
        return loaded

    store.load_unless_processed = raced  # type: ignore[method-assign]
    body = {
        "room": ROOM,
        "participant": "p",
        "role": "moderator",
        "payload": {"action": "create_new_access_token"},
    }
    second = Delivery(
        body=json.dumps(body).encode(),
        routing_key=command_routing_key(ROOM),
        message_id="second",
        partition=0,
        delivery_count=0,
    )
    processor.on_delivery(second)
    await transport.until(lambda: len(transport.published) == 2)
    transport.confirms[1].set_result(None)
    await transport.until(lambda: len(transport.acked) == 2)
    assert (await store.load(ROOM, ("p",))).participants["p"].role == "moderator"
    assert transport.requeued == []
