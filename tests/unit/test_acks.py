"""Coalesced acks (``transport.acks``, ``transport.amqp.ConsumingChannel``): one ``multiple`` ack covers
only a run of done deliveries from the oldest unsettled one; a delivery done behind one still being
handled is acked on its own; a requeued delivery is never covered; nothing is sent once the channel is
closed."""

from __future__ import annotations

import asyncio
from typing import Any

import aiormq.base

from livekit_signaling.transport.acks import AckCoalescer
from livekit_signaling.transport.amqp import ChannelTasks, ConsumingChannel


def coalescer(*tags: int) -> AckCoalescer:
    acks = AckCoalescer()
    for tag in tags:
        acks.delivered(tag)
    return acks


def test_a_run_done_in_order_is_one_multiple_ack() -> None:
    acks = coalescer(1, 2, 3, 4)
    for tag in (1, 2, 3):
        acks.done(tag)
    assert acks.take() == [(3, True)]
    assert acks.unsettled == 1
    acks.done(4)
    assert acks.take() == [(4, False)]
    assert acks.unsettled == 0


def test_a_delivery_done_behind_one_still_running_is_acked_alone() -> None:
    # Rooms complete out of order: 1 is still running (a slow LiveKit call), 2 and 4 are done.
    acks = coalescer(1, 2, 3, 4)
    acks.done(4)
    acks.done(2)
    assert acks.take() == [(2, False), (4, False)]  # never a multiple ack over 1 (or 3)
    acks.done(1)
    acks.done(3)
    assert acks.take() == [(3, True)]  # 2 is settled already: 1 and 3 are the run
    assert acks.unsettled == 0


def test_the_front_run_and_the_stragglers_in_one_flush() -> None:
    acks = coalescer(5, 6, 7, 8, 9)
    for tag in (9, 5, 6):
        acks.done(tag)
    assert acks.take() == [(6, True), (9, False)]
    assert acks.unsettled == 2  # 7 and 8


def test_a_requeued_delivery_is_never_covered_and_does_not_block_the_run() -> None:
    acks = coalescer(1, 2, 3)
    acks.done(1)
    acks.settled_otherwise(2)  # its nack is sent: no later multiple ack may cover it
    acks.done(3)
    frames = acks.take()
    assert frames == [(3, True)]  # 2 is no longer unsettled at the broker, so 3 covers only 1 and 3


def test_the_first_done_since_a_flush_asks_for_one() -> None:
    acks = coalescer(1, 2, 3)
    assert acks.done(1) is True
    assert acks.done(2) is False  # the flush already scheduled takes it too
    acks.take()
    assert acks.done(3) is True
    assert acks.take() == [(3, False)]
    assert acks.take() == []


def test_a_delivery_out_of_tag_order_keeps_the_run_correct() -> None:
    acks = coalescer(1, 3)
    acks.delivered(2)
    acks.done(1)
    acks.done(3)
    assert acks.take() == [(1, False), (3, False)]  # 2 is still running


class Channel(aiormq.base.Base):
    """An aiormq channel that records the acks it is asked to send."""

    def __init__(self, *, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop=loop)
        self.sent: list[tuple[int, bool]] = []

    async def _on_close(self, exc: BaseException | None = None) -> None:
        return None

    async def basic_ack(self, delivery_tag: int, multiple: bool = False, wait: bool = True) -> None:
        if self.is_closed:
            raise aiormq.exceptions.ChannelInvalidStateError("closed")
        self.sent.append((delivery_tag, multiple))

    def __str__(self) -> str:
        return "test channel"


async def test_acks_done_in_one_turn_of_the_loop_leave_in_one_frame() -> None:
    channel = Channel(loop=asyncio.get_running_loop())
    consuming = ConsumingChannel(channel)
    for tag in range(1, 6):
        consuming.acks.delivered(tag)
    for tag in range(1, 6):
        assert consuming.ack(tag)
    assert channel.sent == []  # queued until the end of this turn
    for _ in range(3):
        await asyncio.sleep(0)
    assert channel.sent == [(5, True)]


async def test_flush_sends_what_is_queued_at_once() -> None:
    channel = Channel(loop=asyncio.get_running_loop())
    consuming = ConsumingChannel(channel)
    consuming.acks.delivered(1)
    consuming.ack(1)
    sending = consuming.flush()
    assert sending is not None
    await sending
    assert channel.sent == [(1, False)]
    await asyncio.sleep(0)  # the scheduled flush finds nothing left
    assert channel.sent == [(1, False)]


async def test_nothing_is_acked_on_a_closed_channel() -> None:
    channel = Channel(loop=asyncio.get_running_loop())
    consuming = ConsumingChannel(channel)
    consuming.acks.delivered(1)
    consuming.acks.delivered(2)
    consuming.ack(1)
    await channel.close()
    await asyncio.sleep(0)
    assert consuming.ack(2) is False
    for _ in range(3):
        await asyncio.sleep(0)
    assert channel.sent == []  # the broker redelivers both


async def test_operations_on_a_channel_are_cancelled_when_it_closes() -> None:
    channel = Channel(loop=asyncio.get_running_loop())
    tasks = ChannelTasks(channel)
    started = asyncio.Event()

    async def stuck() -> None:  # a publish waiting for room in a dead connection's write queue
        started.set()
        await asyncio.Event().wait()

    waiting = tasks.run(stuck())
    await started.wait()
    await channel.close()
    await asyncio.sleep(0)
    assert waiting.cancelled()


async def test_an_operation_on_a_closed_channel_does_not_start() -> None:
    channel = Channel(loop=asyncio.get_running_loop())
    await channel.close()
    tasks = ChannelTasks(channel)
    ran = False

    async def publish() -> Any:
        nonlocal ran
        ran = True

    lost = tasks.run(publish())
    assert lost.done()
    assert isinstance(lost.exception(), ConnectionError)
    assert not ran


class QueuedChannel(Channel):
    """A channel that writes its frames as aiormq does, through the connection's bounded write queue
    (``asyncio.Queue``: when it is full, a later ``put`` can overtake one that waits), and a broker
    behind it that settles what arrives as RabbitMQ does: a ``multiple`` ack settles every outstanding
    tag up to its own, and a frame for a tag no longer outstanding closes the channel."""

    def __init__(self, *, loop: asyncio.AbstractEventLoop, tags: range) -> None:
        super().__init__(loop=loop)
        self.write_queue: asyncio.Queue[tuple[str, int, bool]] = asyncio.Queue(maxsize=1)
        self.outstanding = set(tags)
        self.requeued: list[int] = []
        self.unknown: list[int] = []

    async def basic_ack(self, delivery_tag: int, multiple: bool = False, wait: bool = True) -> None:
        await self.write_queue.put(("ack", delivery_tag, multiple))

    async def basic_nack(
        self, delivery_tag: int, multiple: bool = False, requeue: bool = True, wait: bool = True
    ) -> None:
        await self.write_queue.put(("nack", delivery_tag, multiple))

    def broker_reads(self) -> None:
        """The connection's writer takes one frame off the queue; the broker settles it."""
        method, tag, multiple = self.write_queue.get_nowait()
        if tag not in self.outstanding:
            self.unknown.append(tag)  # PRECONDITION_FAILED - unknown delivery tag
            return
        settled = {t for t in self.outstanding if t <= tag} if multiple else {tag}
        self.outstanding -= settled
        if method == "nack":
            self.requeued.append(tag)


async def turns(count: int = 5) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


async def broker_reads_all(channel: QueuedChannel) -> None:
    """The writer drains the queue while the senders run (every waiting ``put`` gets its turn)."""
    for _ in range(20):
        await turns()
        if not channel.write_queue.empty():
            channel.broker_reads()


async def test_a_multiple_ack_never_overtakes_an_ack_queued_before_it() -> None:
    """1 is still running while 2 is done: 2 is acked alone, and that frame waits for room in the full
    write queue. Then 1 and 3 are done: their ack is ``multiple`` up to 3, which covers 2 at the broker.
    If it reached the queue first, the broker would settle 2 with it and close the channel on the ack
    of 2 that follows."""
    channel = QueuedChannel(loop=asyncio.get_running_loop(), tags=range(1, 5))
    consuming = ConsumingChannel(channel)
    for tag in range(1, 5):
        consuming.acks.delivered(tag)
    channel.write_queue.put_nowait(("ack", 99, False))  # the queue is full (a publish, in aiormq)
    channel.outstanding.add(99)
    consuming.ack(2)
    await turns()  # the flush of 2 waits for room
    consuming.ack(1)
    consuming.ack(3)
    consuming.flush()  # decided now, ready to run before the waiting one is woken
    channel.broker_reads()  # room for one frame
    await broker_reads_all(channel)
    assert channel.unknown == []
    assert channel.outstanding == {4}


async def test_a_requeue_leaves_before_a_multiple_ack_decided_after_it() -> None:
    """2 is requeued while the write queue is full; then 1 and 3 are done. Their ``multiple`` ack up to
    3 must not reach the broker before the nack of 2 (it would settle 2, and the nack would then close
    the channel); 2 goes back to the queue."""
    channel = QueuedChannel(loop=asyncio.get_running_loop(), tags=range(1, 4))
    consuming = ConsumingChannel(channel)
    for tag in range(1, 4):
        consuming.acks.delivered(tag)
    channel.write_queue.put_nowait(("ack", 99, False))
    channel.outstanding.add(99)
    requeued = consuming.requeue(2)
    await turns()
    consuming.ack(1)
    consuming.ack(3)
    consuming.flush()
    channel.broker_reads()
    await broker_reads_all(channel)
    assert requeued.done()
    assert channel.unknown == []
    assert channel.requeued == [2]
    assert channel.outstanding == set()
