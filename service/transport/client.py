"""The controller's side of the contract, for operators: publish one command, watch a room's events.

Used by ``livekit-signaling send`` and ``watch``; it declares only a private, exclusive queue bound to
the event exchange, so it never disturbs the service's own topology.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractQueue, DeliveryMode, ExchangeType

from service.transport.brokers import connect_failover


@dataclass(frozen=True, slots=True)
class WatchedEvent:
    routing_key: str
    correlation_id: str | None
    body: bytes


@asynccontextmanager
async def _event_queue(
    urls: Sequence[str], event_exchange: str, binding: str
) -> AsyncIterator[AbstractQueue]:
    # The first node that answers; ``watch`` moves to another node if that one goes away.
    connection = await connect_failover(urls, client_properties={"connection_name": "livekit-signaling cli"})
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(event_exchange, ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, routing_key=binding)
        yield queue


async def watch(urls: Sequence[str], event_exchange: str, room: str) -> AsyncIterator[WatchedEvent]:
    """Every event of ``room`` as it passes, until cancelled."""
    async with _event_queue(urls, event_exchange, f"room.{room}.#") as queue, queue.iterator() as messages:
        async for message in messages:
            await message.ack()
            yield WatchedEvent(message.routing_key or "", message.correlation_id, message.body)


async def send(
    urls: Sequence[str],
    *,
    command_exchange: str,
    event_exchange: str,
    room: str,
    body: bytes,
    timeout: float,  # noqa: ASYNC109 - the answer window, not an I/O timeout
) -> list[WatchedEvent]:
    """Publish one command (confirmed) and collect the events correlated with it for ``timeout``."""
    message_id = uuid.uuid4().hex
    answers: list[WatchedEvent] = []
    async with _event_queue(urls, event_exchange, f"room.{room}.#") as queue:

        async def collect(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            if message.correlation_id == message_id:
                answers.append(WatchedEvent(message.routing_key or "", message.correlation_id, message.body))

        await queue.consume(collect, no_ack=True)
        channel = queue.channel
        exchange = await channel.declare_exchange(command_exchange, ExchangeType.TOPIC, durable=True)
        await exchange.publish(
            aio_pika.Message(
                body,
                content_type="application/json",
                message_id=message_id,
                delivery_mode=DeliveryMode.PERSISTENT,
            ),
            routing_key=f"room.{room}",
        )
        await asyncio.sleep(timeout)
    return answers
