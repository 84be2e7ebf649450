"""RabbitMQ topology, consumption of the partition queues, and confirmed publishing.

Topology (every replica declares it; declarations are idempotent)::

    <command exchange> (topic)  --room.*-->  <queue>.partitions (x-consistent-hash)  --"1"-->  <queue>.<n>
    <queue>.<n>: quorum, single-active-consumer, x-delivery-limit, dead-letters to <dead-letter exchange>
    <dead-letter exchange> (fanout)  -->  <dead-letter exchange> (quorum queue)
    <event exchange> (topic): events are published with mandatory=True and publisher confirms

With one partition the queue is bound to the command exchange directly and the consistent-hash plugin is
not needed. Upstream publishers see only the command exchange, whatever the partitioning.

Several nodes: the connection is a ``brokers.FailoverConnection`` over every address of ``AMQP_URL``;
after a lost connection aio-pika restores all of the above on whichever node answers next.

Leader placement: a partition queue is created with ``x-queue-leader-locator: balanced``, so that
RabbitMQ puts its leader on the node that leads the fewest quorum queues at that moment and no node
carries every partition (the default, ``client-local``, puts every leader on the node the declaring
replica is connected to). RabbitMQ 3.10 counts that argument in its equivalence check: redeclaring with
it a queue created without it (by an earlier release) fails with PRECONDITION_FAILED, and so does the
reverse. The locator only matters when a queue is created, so an existing queue is declared as it was
created; its leaders are moved with ``rabbitmq-queues rebalance quorum`` (docs/high-availability).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    DeliveryMode,
    ExchangeType,
)
from aiormq import spec

from livekit_signaling.pipeline.ports import (
    ChannelLost,
    Delivery,
    EventRefused,
    OutgoingEvent,
    Publication,
    PublishingChannel,
    UnroutableEvent,
)
from livekit_signaling.schemas.routing import EVERY_ROOM_COMMAND
from livekit_signaling.transport.acks import AckCoalescer
from livekit_signaling.transport.brokers import FailoverConnection, connect_failover, node_label
from livekit_signaling.transport.refusals import explain_refusal

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Header that carries why the service dead-lettered a message.
REASON_HEADER = "x-signaling-reason"
#: Quorum queue argument choosing the node that leads a queue when it is created (RabbitMQ >= 3.10).
LEADER_LOCATOR = "x-queue-leader-locator"
#: The node leading the fewest quorum queues at creation (random above 1,000 queues in the cluster).
BALANCED = "balanced"
PERSISTENT = int(DeliveryMode.PERSISTENT)


@dataclass(frozen=True, kw_only=True)
class Topology:
    command_exchange: str
    event_exchange: str
    queue: str
    partitions: int
    dead_letter_exchange: str
    delivery_limit: int

    def partition_queue(self, partition: int) -> str:
        return self.queue if self.partitions == 1 else f"{self.queue}.{partition}"

    @property
    def hash_exchange(self) -> str:
        return f"{self.queue}.partitions"


@dataclass(slots=True)
class AmqpDelivery(Delivery):
    """A delivery with the message it came in, which settles it."""

    message: AbstractIncomingMessage | None = None


#: What publishing raises while the connection is down or a channel is not yet restored.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    aio_pika.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelClosed,
    aiormq.exceptions.ConnectionClosed,
    ConnectionError,
    RuntimeError,
)


async def until_closed(channel: aiormq.abc.AbstractChannel, operation: Awaitable[T]) -> T:
    """``operation`` on ``channel`` (a publish, an ack), or ``ChannelLost`` as soon as the channel
    closes.

    aiormq writes every frame through its connection's bounded write queue. When RabbitMQ stops reading
    a publisher's socket (credit flow: a node whose publishes a partition holds back), that queue
    fills and writes wait for room in it; if the connection then goes, aiormq rejects the pending
    confirms but leaves those writes, and every publish queued behind the channel's lock, waiting for
    ever, and with them the commands that wait for their confirms or their acks, and their rooms. So no
    operation waits on a channel past its closing."""
    if channel.is_closed:
        if asyncio.iscoroutine(operation):
            operation.close()  # never started
        raise ChannelLost(f"{channel!r} closed")
    task = asyncio.ensure_future(operation)
    closing = channel.closing
    try:
        await asyncio.wait((task, closing), return_when=asyncio.FIRST_COMPLETED)
    finally:
        closing.cancel()  # only this observer of the channel's closing
        if not task.done():
            task.cancel()
            # Not awaited (it may not end soon): whatever it ends with is read, so never reported.
            task.add_done_callback(lambda done: done.cancelled() or done.exception())
    if not task.done():
        raise ChannelLost(f"{channel!r} closed")
    return task.result()


async def publish_confirmed(
    channel: AbstractChannel,
    body: bytes,
    *,
    exchange: str,
    routing_key: str,
    properties: spec.Basic.Properties,
    mandatory: bool,
) -> None:
    """Publish on a confirming channel and wait for the broker's confirm, through aiormq directly (no
    ``aio_pika.Message`` to validate) and with ``wait=False``, so that publishes do not queue behind the
    channel lock until each frame is flushed; frames still leave in order. Raises aiormq's
    ``PublishError`` for a returned mandatory message, ``DeliveryError`` for a nack."""
    # aiormq's abstract channel does not declare ``wait``; the channel it hands out does.
    underlay = cast(aiormq.Channel, await channel.get_underlay_channel())
    await until_closed(
        underlay,
        underlay.basic_publish(
            body,
            exchange=exchange,
            routing_key=routing_key,
            properties=properties,
            mandatory=mandatory,
            wait=False,
        ),
    )


class ChannelTasks:
    """The operations in flight on one aiormq channel, cancelled together as soon as it closes: what
    ``until_closed`` does for one operation, with one observer of the channel's closing for all of them
    instead of a task and an ``asyncio.wait`` each (on the path of every event and every ack)."""

    __slots__ = ("_observer", "_tasks", "channel", "closed")

    def __init__(self, channel: aiormq.abc.AbstractChannel) -> None:
        self.channel = channel
        self._tasks: set[asyncio.Future[Any]] = set()
        self.closed = channel.is_closed
        self._observer: asyncio.Future[Any] | None = None
        if not self.closed:
            self._observer = channel.closing
            self._observer.add_done_callback(self._on_closed)

    def run(self, operation: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
        """``operation`` as a task, cancelled if the channel closes before it ends; when it is closed
        already, a future that failed with ``ChannelLost`` (and ``operation`` never starts)."""
        if self.closed:
            operation.close()
            lost: asyncio.Future[T] = asyncio.get_running_loop().create_future()
            lost.set_exception(ChannelLost("channel closed"))
            return lost
        task = asyncio.ensure_future(operation)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _on_closed(self, observer: asyncio.Future[Any]) -> None:
        self.closed = True
        if not observer.cancelled():
            observer.exception()  # read: how the channel closed is not this observer's concern
        for task in list(self._tasks):
            task.cancel()
        self._tasks.clear()

    def stop(self) -> None:
        """Stop observing (the channel is forgotten); operations in flight go on."""
        if self._observer is not None:
            self._observer.remove_done_callback(self._on_closed)
            self._observer.cancel()  # only this observer of the channel's closing
            self._observer = None


class ConsumingChannel:
    """A partition's consuming channel as the transport settles its deliveries: acks coalesced per turn
    of the event loop (``acks.AckCoalescer``), dropped with the channel (the broker then redelivers
    those commands, and duplicate suppression recognises them).

    Every settling frame of the channel (the coalesced acks and the nacks of requeued commands) leaves
    in the order it was decided: each send waits for the one before it. aiormq's write queue is an
    ``asyncio.Queue`` with a bound, and when it is full a later ``put`` can overtake one that waits; a
    ``multiple`` ack that overtook a single ack or a nack below its tag would settle that delivery
    first, and the broker closes the channel on the second frame for it (``PRECONDITION_FAILED -
    unknown delivery tag``)."""

    __slots__ = ("_last", "acks", "channel", "tasks")

    def __init__(self, channel: aiormq.abc.AbstractChannel) -> None:
        self.channel = channel
        self.tasks = ChannelTasks(channel)
        self.acks = AckCoalescer()
        self._last: asyncio.Future[None] | None = None

    def ack(self, tag: int) -> bool:
        """Queue the delivery's ack; sent at the end of this turn of the event loop. False when the
        channel is closed (the broker redelivers it)."""
        if self.tasks.closed:
            return False
        if self.acks.done(tag):
            asyncio.get_running_loop().call_soon(self.flush)
        return True

    def flush(self) -> asyncio.Future[None] | None:
        """Send the queued acks now (after every frame queued before this call)."""
        frames = self.acks.take()
        if not frames or self.tasks.closed:
            return None
        return self._send(frames, requeue=False)

    def requeue(self, tag: int) -> asyncio.Future[None]:
        """Hand the delivery back to the queue (``basic.nack`` with ``requeue``), after the acks
        already decided; no later ``multiple`` ack covers it."""
        self.acks.settled_otherwise(tag)
        return self._send([(tag, False)], requeue=True)

    def _send(self, frames: list[tuple[int, bool]], *, requeue: bool) -> asyncio.Future[None]:
        sending = self.tasks.run(self._after(self._last, frames, requeue=requeue))
        sending.add_done_callback(_settle_outcome)
        self._last = sending
        return sending

    async def _after(
        self, previous: asyncio.Future[None] | None, frames: list[tuple[int, bool]], *, requeue: bool
    ) -> None:
        if previous is not None and not previous.done():
            await asyncio.wait((previous,))  # its outcome is its own (logged by _settle_outcome)
        channel = cast(aiormq.Channel, self.channel)
        for tag, multiple in frames:
            if requeue:
                await channel.basic_nack(tag, multiple=multiple, requeue=True, wait=False)
            else:
                await channel.basic_ack(tag, multiple=multiple, wait=False)


def _settle_outcome(sending: asyncio.Future[None]) -> None:
    if sending.cancelled():
        error: BaseException | None = ChannelLost("channel closed")
    else:
        error = sending.exception()
    if error is not None:
        log.info("could not settle commands (%s); the broker will redeliver them", type(error).__name__)


DeliveryCallback = Callable[[Delivery], None]


class AmqpTransport:
    """Owns the connection, a publishing channel (confirms + mandatory), and one consuming channel per
    partition: closing a partition's channel hands all its unacknowledged messages back to the broker at
    once and in order, which is what a hand-over to another replica and a shutdown need."""

    def __init__(
        self,
        *,
        urls: Sequence[str],
        topology: Topology,
        prefetch: int,
        heartbeat_seconds: int,
        reconnect_interval_seconds: float,
        connect_timeout_seconds: float,
        connection_name: str,
    ) -> None:
        self._urls = tuple(urls)
        self._connect_timeout = connect_timeout_seconds
        self.topology = topology
        self._prefetch = prefetch
        self._heartbeat = heartbeat_seconds
        self._reconnect_interval = reconnect_interval_seconds
        self._connection_name = connection_name
        self._connection: FailoverConnection | None = None
        self._publish_channel: AbstractChannel | None = None
        self._dead_letter_exchange: AbstractExchange | None = None
        # Strong references: aio-pika's robust objects restore only what is still referenced.
        self._topology_objects: list[object] = []
        self._partition_channels: dict[int, AbstractChannel] = {}
        self._partition_queues: dict[int, AbstractQueue] = {}
        #: Our consumer tag on each subscribed partition's queue.
        self._partition_consumers: dict[int, str] = {}
        #: Connected, and aio-pika done restoring channels and consumers (its ``connected`` event is set
        #: before it restores them; its reconnect callbacks run after).
        self._restored = False
        #: Arguments each partition queue is declared with (see ``_partition_queue_arguments``).
        self._partition_arguments: dict[str, dict[str, Any]] = {}
        #: Partitions that delivered something since we last subscribed to them: on a
        #: single-active-consumer queue, that means we are its active consumer.
        self.active_partitions: set[int] = set()
        self._on_delivery: DeliveryCallback | None = None
        #: Per consuming aiormq channel (a robust channel gets a new one after a reconnection), its acks.
        self._consuming: dict[aiormq.abc.AbstractChannel, ConsumingChannel] = {}
        #: The operations in flight on the publishing channel's current aiormq channel.
        self._publishing: ChannelTasks | None = None
        self.on_connection_change: Callable[[bool], None] = lambda _connected: None

    # -- connection -----------------------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect to the first node that answers (later reconnections go to the nodes in turn) and
        declare the topology. Raises ``BrokerRefusal`` when the broker answers but refuses (login, vhost,
        permissions, arguments, exchange type): a configuration error, not an outage."""
        try:
            self._connection = await connect_failover(
                self._urls,
                connect_timeout=self._connect_timeout,
                heartbeat=self._heartbeat,
                reconnect_interval=self._reconnect_interval,
                client_properties={"connection_name": self._connection_name},
            )
            self._connection.close_callbacks.add(self._on_connection_closed)
            self._connection.reconnect_callbacks.add(self._on_reconnected)
            self._publish_channel = await self._connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
            await self._declare()
        except aiormq.exceptions.AMQPError as error:
            refusal = explain_refusal(error)
            if refusal is None:
                raise
            raise refusal from error
        log.info("connected to RabbitMQ node %s", self.node)
        self._restored = True
        self.on_connection_change(True)

    def _on_connection_closed(self, *_: Any) -> None:
        self._restored = False
        self.on_connection_change(False)

    def _on_reconnected(self, *_: Any) -> None:
        log.warning("reconnected to RabbitMQ node %s; topology and consumers restored", self.node)
        self._restored = True
        # Restored consumers join the single-active-consumer election afresh.
        self.active_partitions.clear()
        self.on_connection_change(True)

    @property
    def node(self) -> str | None:
        """``host:port/vhost`` of the node connected to (or being tried next); never credentials."""
        return self._connection.node if self._connection is not None else None

    @property
    def nodes(self) -> tuple[str, ...]:
        """Every configured node, as ``node`` names them."""
        return tuple(node_label(url) for url in self._urls)

    @property
    def is_connected(self) -> bool:
        return (
            self._connection is not None
            and not self._connection.is_closed
            and (self._connection.connected.is_set())
        )

    async def wait_connected(self, seconds: float) -> bool:
        """Until connected (True) or ``seconds`` passed (False)."""
        if self._connection is None:
            return False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._connection.connected.wait()
        return self.is_connected

    async def close(self, *, timeout_seconds: float = 5.0) -> None:
        """Close the connection; bounded, since a close waits for a broker that may be gone."""
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                async with asyncio.timeout(timeout_seconds):
                    await connection.close()
            except (TimeoutError, aiormq.exceptions.AMQPError, ConnectionError, RuntimeError) as error:
                log.warning("RabbitMQ connection not closed cleanly (%s)", type(error).__name__)

    # -- topology -------------------------------------------------------------------------------------

    def _queue_arguments(self, *, leader_locator: bool) -> dict[str, Any]:
        arguments: dict[str, Any] = {
            "x-queue-type": "quorum",
            "x-single-active-consumer": True,
            "x-delivery-limit": self.topology.delivery_limit,
            "x-dead-letter-exchange": self.topology.dead_letter_exchange,
        }
        if leader_locator:
            arguments[LEADER_LOCATOR] = BALANCED
        return arguments

    async def _partition_queue_arguments(self, names: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Per partition queue, the arguments to declare it with from now on (module docstring,
        "Leader placement"): with ``x-queue-leader-locator: balanced`` where the queue is new or was
        created with it, without it where an earlier release created the queue without it.

        Each is tried on a throwaway channel (a refused declaration closes its channel), so that the
        robust channels only ever declare what the broker accepts, and restore the same after a
        reconnect."""
        assert self._publish_channel is not None
        underlay = await self._publish_channel.get_underlay_channel()
        probe = await underlay.connection.channel(publisher_confirms=False)
        chosen: dict[str, dict[str, Any]] = {}
        try:
            for name in names:
                arguments = self._queue_arguments(leader_locator=True)
                try:
                    await probe.queue_declare(name, durable=True, arguments=arguments)
                except aiormq.exceptions.ChannelPreconditionFailed as error:
                    if LEADER_LOCATOR not in str(error):
                        raise  # another argument differs: a configuration error, as before
                    probe = await underlay.connection.channel(publisher_confirms=False)
                    arguments = self._queue_arguments(leader_locator=False)
                chosen[name] = arguments
        finally:
            if not probe.is_closed:
                await probe.close()
        older = [name for name, arguments in chosen.items() if LEADER_LOCATOR not in arguments]
        if older:
            log.info(
                "%d partition queue(s) were created without a leader locator by an earlier release and "
                "keep their placement; `rabbitmq-queues rebalance quorum` spreads their leaders",
                len(older),
            )
        return chosen

    async def _declare(self) -> None:
        assert self._publish_channel is not None
        t = self.topology
        channel = self._publish_channel
        commands = await channel.declare_exchange(t.command_exchange, ExchangeType.TOPIC, durable=True)
        events = await channel.declare_exchange(t.event_exchange, ExchangeType.TOPIC, durable=True)
        self._dead_letter_exchange = await channel.declare_exchange(
            t.dead_letter_exchange, ExchangeType.FANOUT, durable=True
        )
        dead_letters = await channel.declare_queue(
            t.dead_letter_exchange, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await dead_letters.bind(t.dead_letter_exchange)
        self._topology_objects = [commands, events, dead_letters]
        source: AbstractExchange = commands
        if t.partitions > 1:
            source = await channel.declare_exchange(t.hash_exchange, "x-consistent-hash", durable=True)
            await source.bind(commands, routing_key=EVERY_ROOM_COMMAND)
            self._topology_objects.append(source)
        names = [t.partition_queue(partition) for partition in range(t.partitions)]
        self._partition_arguments = await self._partition_queue_arguments(names)
        _, binding_key = self._partition_binding()
        for name in names:
            queue = await channel.declare_queue(name, durable=True, arguments=self._partition_arguments[name])
            await queue.bind(source, routing_key=binding_key)
            self._topology_objects.append(queue)

    def _partition_binding(self) -> tuple[str, str]:
        """The exchange a partition queue is bound to, and the binding key: the consistent-hash
        exchange with the partition's weight, or with one partition the command exchange itself."""
        t = self.topology
        if t.partitions > 1:
            return t.hash_exchange, "1"
        return t.command_exchange, EVERY_ROOM_COMMAND

    # -- consuming ------------------------------------------------------------------------------------

    async def start_consuming(self, on_delivery: DeliveryCallback) -> None:
        self._on_delivery = on_delivery
        for partition in range(self.topology.partitions):
            await self.subscribe(partition)

    async def subscribe(self, partition: int) -> None:
        """Open the partition's own channel and join its consumers (active, or waiting behind others)."""
        assert self._connection is not None
        channel = await self._connection.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=self._prefetch)
        name = self.topology.partition_queue(partition)
        queue = await channel.declare_queue(name, durable=True, arguments=self._partition_arguments[name])
        # Bound again (a binding that exists is left as it is, as after every reconnection): a queue
        # that was deleted under us, which subscribing again declares anew, gets its commands back.
        exchange, binding_key = self._partition_binding()
        await queue.bind(exchange, routing_key=binding_key)

        async def on_message(message: AbstractIncomingMessage) -> None:
            # Synchronous up to the hand-over, so that delivery order is submission order.
            assert self._on_delivery is not None
            self.active_partitions.add(partition)
            with contextlib.suppress(aio_pika.exceptions.ChannelInvalidStateError):  # closed: never acked
                self._consuming_channel(message.channel).acks.delivered(message.delivery_tag or 0)
            headers = dict(message.headers or {})
            count = headers.get("x-delivery-count", 0)
            self._on_delivery(
                AmqpDelivery(
                    body=message.body,
                    routing_key=message.routing_key or "",
                    message_id=message.message_id,
                    partition=partition,
                    delivery_count=count if isinstance(count, int) else 0,
                    user_id=message.user_id,
                    headers=headers,
                    message=message,
                )
            )

        self._partition_consumers[partition] = await queue.consume(on_message)
        self._partition_channels[partition] = channel
        self._partition_queues[partition] = queue

    async def partitions_not_consumed(self) -> list[int]:
        """Subscribed partitions on which we have no consumer while the connection is up: the broker
        cancelled it (``basic.cancel``: the queue was deleted), or the channel closed and was not
        opened again. aio-pika restores consumers after a reconnection, not after either of these, so
        the partition would stay held and unconsumed (with single-active-consumer, another replica's
        waiting consumer takes over only when ours goes). Empty while disconnected and while aio-pika
        restores channels and consumers after a reconnection: that is its own work."""
        if not (self.is_connected and self._restored):
            return []
        lost = []
        for partition, channel in list(self._partition_channels.items()):
            try:
                underlay = await channel.get_underlay_channel()
            except aiormq.exceptions.ChannelInvalidStateError:
                lost.append(partition)
                continue
            assert isinstance(underlay, aiormq.Channel)  # AbstractChannel does not declare its consumers
            if underlay.is_closed or self._partition_consumers.get(partition) not in underlay.consumers:
                lost.append(partition)
        return lost

    def _consuming_channel(self, channel: aiormq.abc.AbstractChannel) -> ConsumingChannel:
        consuming = self._consuming.get(channel)
        if consuming is None:
            for gone in [known for known, state in self._consuming.items() if state.tasks.closed]:
                self._consuming.pop(gone).tasks.stop()
            consuming = self._consuming[channel] = ConsumingChannel(channel)
        return consuming

    async def flush_acks(self) -> None:
        """Send every queued ack now, and wait until they are handed to the connection."""
        sending = [flushed for state in self._consuming.values() if (flushed := state.flush()) is not None]
        if sending:
            await asyncio.gather(*sending, return_exceptions=True)

    async def release(self, partition: int, *, timeout_seconds: float = 5.0) -> None:
        """Close the partition's channel: the broker takes back every message it delivered to us and
        not yet acknowledged, in queue order, and the next waiting consumer becomes active. The acks
        of the commands settled so far go out first."""
        self.active_partitions.discard(partition)
        self._partition_queues.pop(partition, None)
        self._partition_consumers.pop(partition, None)
        channel = self._partition_channels.pop(partition, None)
        if channel is None or not self.is_connected:
            return  # a dead connection has released everything already
        try:
            async with asyncio.timeout(timeout_seconds):
                await self.flush_acks()
                await channel.close()
        except (TimeoutError, aiormq.exceptions.AMQPError, ConnectionError, RuntimeError) as error:
            log.warning("partition %d channel not closed cleanly (%s)", partition, type(error).__name__)

    async def release_all(self, *, timeout_seconds: float = 5.0) -> None:
        for partition in list(self._partition_channels):
            await self.release(partition, timeout_seconds=timeout_seconds)

    @property
    def subscribed_partitions(self) -> Sequence[int]:
        return sorted(self._partition_channels)

    def is_current(self, delivery: Delivery) -> bool:
        """False for a delivery whose channel was closed (its partition released) or died (a lost
        connection; aio-pika still hands over what that channel had prefetched): the broker gives it to
        a consumer again, so running it here would run it twice, and it cannot be settled anyway."""
        message = delivery.message if isinstance(delivery, AmqpDelivery) else None
        if message is None:
            return False
        try:
            return not message.channel.is_closed
        except aio_pika.exceptions.ChannelInvalidStateError:
            return False

    # -- settling deliveries --------------------------------------------------------------------------

    def _settling(self, delivery: Delivery, action: str) -> tuple[ConsumingChannel, int] | None:
        """The delivery's channel as the transport settles it, and its tag; None when there is nothing
        to settle it on (its channel is gone: the broker has the command back already)."""
        message = delivery.message if isinstance(delivery, AmqpDelivery) else None
        if message is None or message.delivery_tag is None:
            return None
        try:
            channel = message.channel
        except aio_pika.exceptions.ChannelInvalidStateError:
            log.info("could not %s a command (channel closed); the broker will redeliver it", action)
            return None
        return self._consuming_channel(channel), message.delivery_tag

    async def ack(self, delivery: Delivery) -> bool:
        """Queue the ack (``ConsumingChannel``); False when its channel is gone."""
        settling = self._settling(delivery, "ack")
        return settling is not None and settling[0].ack(settling[1])

    async def requeue(self, delivery: Delivery) -> bool:
        """Hand the command back to its queue, in order with the channel's acks (``ConsumingChannel``);
        False when its channel is gone."""
        settling = self._settling(delivery, "requeue")
        if settling is None:
            return False
        sending = settling[0].requeue(settling[1])
        await asyncio.wait((sending,))
        return not sending.cancelled() and sending.exception() is None

    # -- publishing -----------------------------------------------------------------------------------

    async def publishing_channel(self) -> PublishingChannel:
        """The publishing channel's current underlying channel; waits while the connection is being
        restored. Raises ``ChannelLost`` when there is none."""
        assert self._publish_channel is not None
        try:
            return await self._publish_channel.get_underlay_channel()
        except CONNECTION_ERRORS as error:
            raise ChannelLost(f"no publishing channel ({type(error).__name__})") from error

    def publish_on(self, channel: PublishingChannel, events: Sequence[OutgoingEvent]) -> Publication:
        """Hand ``events`` to ``channel`` in this order without waiting for their confirms.

        Each publish runs as a task; tasks start in the order they were made, and each one's first step
        (synchronous in aiormq's ``basic_publish``) writes its frames to the connection's write queue, so
        events published on one channel leave in the order of ``publish_on`` calls: a room's next command
        may publish before the previous one's confirms are back.
        """
        # aiormq's abstract channel does not declare ``wait``; the channel it hands out does.
        underlay = cast(aiormq.Channel, channel)
        tasks = self._publishing
        if tasks is None or tasks.channel is not channel:
            if tasks is not None:
                tasks.stop()
            tasks = self._publishing = ChannelTasks(underlay)
        return Publication(channel, [tasks.run(self._publish(underlay, event)) for event in events])

    async def _publish(self, channel: aiormq.Channel, event: OutgoingEvent) -> None:
        """One event, persistent and mandatory, confirmed; as ``publish_confirmed`` does it. Cancelled
        when its channel closes (``ChannelTasks``): the pipeline counts that as lost with the channel."""
        try:
            await channel.basic_publish(
                event.body,
                exchange=self.topology.event_exchange,
                routing_key=event.routing_key,
                properties=spec.Basic.Properties(
                    content_type="application/json",
                    delivery_mode=PERSISTENT,
                    correlation_id=event.correlation_id,
                    message_type=event.type,
                    # Returns are matched to their publish by message id: every event needs its own.
                    message_id=event.message_id,
                    # A table of strings is an AMQP field table (pamqp types it as one of any value).
                    headers=cast(dict[str, Any], event.headers),
                ),
                mandatory=True,
                wait=False,
            )
        except aiormq.exceptions.PublishError as error:  # a return (mandatory): before DeliveryError
            raise UnroutableEvent(event.routing_key) from error
        except aiormq.exceptions.DeliveryError as error:
            raise EventRefused(event.routing_key) from error
        except CONNECTION_ERRORS as error:
            raise ChannelLost(f"publishing channel closed ({type(error).__name__})") from error

    async def dead_letter(
        self, body: bytes, *, reason: str, headers: dict[str, Any], routing_key: str
    ) -> None:
        """Publish a copy with the reason (confirmed) to the dead-letter exchange; raises ``ChannelLost``
        while the connection is down."""
        assert self._dead_letter_exchange is not None
        assert self._publish_channel is not None  # the dead-letter exchange's channel
        message = aio_pika.Message(
            body,
            delivery_mode=DeliveryMode.PERSISTENT,
            headers={**headers, REASON_HEADER: reason[:1000], "x-original-routing-key": routing_key},
            message_id=uuid.uuid4().hex,
        )
        try:
            channel = await self._publish_channel.get_underlay_channel()
            await until_closed(
                channel, self._dead_letter_exchange.publish(message, routing_key, mandatory=False)
            )
        except CONNECTION_ERRORS as error:
            raise ChannelLost(f"dead letter not published ({type(error).__name__})") from error
