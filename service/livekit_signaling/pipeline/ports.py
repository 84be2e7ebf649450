"""What the command pipeline needs from the message broker, without AMQP types; the AMQP transport
(``livekit_signaling.transport.amqp``) implements it, and unit tests use small fakes."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from livekit_signaling.telemetry.tracing.port import NO_COMMAND_TRACE, CommandTrace


@dataclass(slots=True)
class Delivery:
    """A command as it came off a partition queue. The transport subclasses it to keep its message."""

    body: bytes
    routing_key: str
    message_id: str | None
    partition: int
    #: Earlier deliveries of this message (quorum queues count them in ``x-delivery-count``).
    delivery_count: int
    #: The AMQP ``user_id`` property: the publishing connection's user, which RabbitMQ has checked.
    user_id: str | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    #: Its consumer span, from delivery to settlement (``CommandProcessor.on_delivery`` starts it).
    trace: CommandTrace = NO_COMMAND_TRACE


@dataclass(frozen=True, slots=True)
class OutgoingEvent:
    body: bytes
    routing_key: str
    type: str
    correlation_id: str | None
    #: Deterministic for a command with a message id (``<message id>:<n>``), so that the events of a
    #: command run twice (a replica killed between publishing and recording it) carry the same ids and
    #: consumers can drop the copies.
    message_id: str
    #: AMQP headers: the trace context (one dict shared by a command's events), None without.
    headers: dict[str, str] | None = None


class UnroutableEvent(Exception):
    """The broker had no queue for an event's routing key."""


class EventRefused(Exception):
    """The broker nacked an event: a queue it was routed to did not take it. A quorum queue does that
    while it has no reachable leader to register the publishing channel with (seconds after a node of
    the cluster stopped), or when it is full with ``x-overflow: reject-publish``."""


class ChannelLost(ConnectionError):
    """There is no open publishing channel, or the one an event was handed to closed before its
    confirm: the event is to be published again once the connection is back."""


class PublishingChannel(Protocol):
    """An open channel events are published on, in order."""

    @property
    def is_closed(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Publication:
    """Events handed to a publishing channel, in order; one future per event for its confirm."""

    channel: PublishingChannel
    confirms: list[asyncio.Future[None]]

    def is_ahead_on(self, channel: PublishingChannel) -> bool:
        """Whether events published on ``channel`` now leave after these: the same channel, still open
        (a closed channel loses what it had not sent, and its events are published again later), and
        none of these refused by the broker so far (a refused event is published again later too)."""
        return channel is self.channel and not channel.is_closed and not any(map(_refused, self.confirms))


def _refused(confirm: asyncio.Future[None]) -> bool:
    return confirm.done() and not confirm.cancelled() and isinstance(confirm.exception(), EventRefused)


class CommandTransport(Protocol):
    """The broker as the pipeline uses it: settle deliveries, publish events with confirms, release and
    take partitions."""

    @property
    def is_connected(self) -> bool: ...

    @property
    def active_partitions(self) -> set[int]:
        """Partitions this replica is the active consumer of."""

    @property
    def subscribed_partitions(self) -> Sequence[int]: ...

    def is_current(self, delivery: Delivery) -> bool:
        """False for a delivery whose channel closed: the broker hands it out again, so running it here
        would run it twice, and it cannot be settled anyway."""

    async def ack(self, delivery: Delivery) -> bool: ...

    async def requeue(self, delivery: Delivery) -> bool: ...

    async def wait_connected(self, seconds: float) -> bool:
        """Until connected (True) or ``seconds`` passed (False)."""

    async def publishing_channel(self) -> PublishingChannel:
        """The current publishing channel; raises ``ChannelLost`` when there is none."""

    def publish_on(self, channel: PublishingChannel, events: Sequence[OutgoingEvent]) -> Publication:
        """Hand ``events`` to ``channel`` in this order without waiting for their confirms. Each confirm
        ends in success, ``UnroutableEvent``, ``EventRefused`` or ``ChannelLost``; events of one
        channel leave in the order of ``publish_on`` calls."""

    async def dead_letter(
        self, body: bytes, *, reason: str, headers: dict[str, Any], routing_key: str
    ) -> None:
        """Publish a copy with the reason (confirmed) to the dead-letter exchange."""

    async def release(self, partition: int) -> None:
        """Close the partition's channel: the broker takes back what it delivered and was not settled,
        in queue order, and the next waiting consumer becomes active."""

    async def subscribe(self, partition: int) -> None:
        """Join the partition's consumers (active, or waiting behind others)."""

    async def partitions_not_consumed(self) -> list[int]:
        """Subscribed partitions without a consumer of ours on the broker while connected (cancelled by
        the broker, or a channel that closed and was not opened again)."""
