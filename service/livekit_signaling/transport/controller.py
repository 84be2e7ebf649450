"""The controller's side of the contract: publish commands, watch a room's events.

Used by ``livekit-signaling send`` and ``watch``, and by the dev console (``ControllerLink``). ``send``
and ``watch`` declare only a private, exclusive, server-named queue bound to the event exchange and look
the service's exchanges up without declaring them, so they never disturb the service's topology and need
no more than a controller's RabbitMQ permissions (``deploy/rabbitmq/definitions.json``). Commands carry
the ``user_id`` property of their own user, which is what a service with
``SIGNALING_TRUSTED_PUBLISHERS`` checks.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

import aio_pika
from aio_pika.abc import (
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    DeliveryMode,
    ExchangeType,
)

from livekit_signaling.schemas.routing import (
    EVERY_EVENT,
    command_routing_key,
    room_events_binding,
)
from livekit_signaling.transport.brokers import FailoverConnection, connect_failover, connect_first


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
async def _event_queue(
    urls: Sequence[str], event_exchange: str, binding: str
) -> AsyncIterator[tuple[AbstractQueue, str]]:
    """An exclusive, server-named queue bound to the event exchange, on the first node that answers;
    with the URL of that node (its user is who publishes)."""
    connection, url = await connect_first(
        urls, client_properties={"connection_name": "livekit-signaling cli"}
    )
    async with connection:
        channel = await connection.channel()
        # Looked up, not declared: declaring needs the configure permission, which only the service has.
        exchange = await channel.get_exchange(event_exchange)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, routing_key=binding)
        yield queue, url


async def watch(urls: Sequence[str], event_exchange: str, room: str) -> AsyncIterator[WatchedEvent]:
    """Every event of ``room`` as it passes, until cancelled."""
    async with (
        _event_queue(urls, event_exchange, room_events_binding(room)) as (queue, _),
        queue.iterator() as messages,
    ):
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
    async with _event_queue(urls, event_exchange, room_events_binding(room)) as (queue, url):

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
            routing_key=command_routing_key(room),
        )
        await asyncio.sleep(timeout)
    return answers


class ControllerLink:
    """A controller's long-lived connection: publishes commands and sees every event passing on the
    event exchange through an exclusive queue of its own bound with ``binding``.

    The connection is robust and moves between the nodes of a cluster (aio-pika restores the queue, its
    binding and the consumer after a reconnect); events are consumed without acknowledgement: an
    observer that misses some while disconnected loses nothing the service depends on.
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        command_exchange: str,
        event_exchange: str,
        connection_name: str,
        binding: str = EVERY_EVENT,
    ) -> None:
        self._urls = tuple(urls)
        self._command_exchange_name = command_exchange
        self._event_exchange_name = event_exchange
        self._connection_name = connection_name
        self._binding = binding
        self._connection: FailoverConnection | None = None
        self._commands: AbstractExchange | None = None

    @property
    def is_connected(self) -> bool:
        return self._connection is not None and not self._connection.is_closed and self._commands is not None

    async def connect(self, on_event: Callable[[WatchedEvent], None]) -> None:
        """Connect, bind the event queue and call ``on_event`` for every event from now on; raises
        when RabbitMQ cannot be reached (the caller decides how to retry)."""
        connection = await connect_failover(
            self._urls, client_properties={"connection_name": self._connection_name}
        )
        try:
            channel = await connection.channel()
            commands = await channel.declare_exchange(
                self._command_exchange_name, ExchangeType.TOPIC, durable=True
            )
            events = await channel.declare_exchange(
                self._event_exchange_name, ExchangeType.TOPIC, durable=True
            )
            # Named rather than server-named, so that the robust connection re-declares the same queue.
            queue = await channel.declare_queue(
                f"{self._event_exchange_name}.{self._connection_name}.{uuid.uuid4().hex[:8]}",
                exclusive=True,
                auto_delete=True,
            )
            await queue.bind(events, routing_key=self._binding)

            async def deliver(message: AbstractIncomingMessage) -> None:
                on_event(WatchedEvent(message.routing_key or "", message.correlation_id, message.body))

            await queue.consume(deliver, no_ack=True)
        except BaseException:
            await connection.close()
            raise
        self._connection, self._commands = connection, commands

    async def publish_command(
        self, routing_key: str, body: bytes, message_id: str, *, headers: dict[str, str] | None = None
    ) -> None:
        """Publish one command as a controller does (persistent, JSON, confirmed by the broker, with
        ``headers``: its trace context); raises ``ConnectionError`` when the broker did not take it."""
        if self._commands is None:
            raise ConnectionError("not connected to RabbitMQ")
        message = aio_pika.Message(
            body,
            content_type="application/json",
            message_id=message_id,
            delivery_mode=DeliveryMode.PERSISTENT,
            user_id=connection_user(str(self._connection.url)) if self._connection is not None else None,
            headers=dict(headers) if headers is not None else None,
        )
        try:
            await self._commands.publish(message, routing_key=routing_key)
        except Exception as error:  # aio-pika and aiormq raise many kinds while reconnecting
            raise ConnectionError(f"RabbitMQ did not take the command ({type(error).__name__})") from error

    async def close(self) -> None:
        connection, self._connection, self._commands = self._connection, None, None
        if connection is not None:
            await connection.close()
