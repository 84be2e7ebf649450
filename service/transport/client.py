"""The controller's side of the contract, for operators: publish one command, watch a room's events.

Used by ``livekit-signaling send`` and ``watch``; it declares only a private, exclusive, server-named
queue bound to the event exchange and looks the service's exchanges up without declaring them, so it
never disturbs the service's topology and needs no more than a controller's RabbitMQ permissions
(``deploy/rabbitmq/definitions.json``). ``send`` sets the ``user_id`` property to its own user, which
is what a service with ``SIGNALING_TRUSTED_PUBLISHERS`` checks.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

import aio_pika
from aio_pika.abc import AbstractQueue, DeliveryMode


@dataclass(frozen=True, slots=True)
class WatchedEvent:
    routing_key: str
    correlation_id: str | None
    body: bytes


def connection_user(url: str) -> str | None:
    """The RabbitMQ user a connection to ``url`` logs in as, as aiormq does it: the URL's user, else
    ``guest``. None with ``?auth=external`` (the broker takes the user from the client certificate, so
    the ``user_id`` to claim is not known here)."""
    parts = urlsplit(url)
    if parse_qs(parts.query).get("auth", ["plain"])[-1].lower() == "external":
        return None
    return unquote(parts.username) if parts.username else "guest"


@asynccontextmanager
async def _event_queue(url: str, event_exchange: str, binding: str) -> AsyncIterator[AbstractQueue]:
    connection = await aio_pika.connect(url, client_properties={"connection_name": "livekit-signaling cli"})
    async with connection:
        channel = await connection.channel()
        # Looked up, not declared: declaring needs the configure permission, which only the service has.
        exchange = await channel.get_exchange(event_exchange)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, routing_key=binding)
        yield queue


async def watch(url: str, event_exchange: str, room: str) -> AsyncIterator[WatchedEvent]:
    """Every event of ``room`` as it passes, until cancelled."""
    async with _event_queue(url, event_exchange, f"room.{room}.#") as queue, queue.iterator() as messages:
        async for message in messages:
            await message.ack()
            yield WatchedEvent(message.routing_key or "", message.correlation_id, message.body)


async def send(
    url: str,
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
    async with _event_queue(url, event_exchange, f"room.{room}.#") as queue:

        async def collect(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            if message.correlation_id == message_id:
                answers.append(WatchedEvent(message.routing_key or "", message.correlation_id, message.body))

        await queue.consume(collect, no_ack=True)
        channel = queue.channel
        exchange = await channel.get_exchange(command_exchange)
        await exchange.publish(
            aio_pika.Message(
                body,
                content_type="application/json",
                message_id=message_id,
                delivery_mode=DeliveryMode.PERSISTENT,
                # RabbitMQ refuses a user_id that is not the connection's own user.
                user_id=connection_user(url),
            ),
            routing_key=f"room.{room}",
        )
        await asyncio.sleep(timeout)
    return answers
