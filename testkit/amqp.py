"""A test's view of the broker: publish commands as a controller does, collect events as clients do, and
remove the topology a service declared."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from livekit_signaling.schemas.routing import EVERY_EVENT, command_routing_key
from livekit_signaling.transport.brokers import connect_failover
from testkit.processes import AMQP_URL, PARTITIONS, Names


def encode_command(
    room: str, participant: str, payload: dict[str, Any], *, role: str = "user", **fields: Any
) -> bytes:
    """A command envelope as a controller encodes it; ``fields``: more envelope fields (``kind``, or
    fields only the bench's baseline reads)."""
    envelope = {"room": room, "participant": participant, "role": role, **fields, "payload": payload}
    return json.dumps(envelope).encode()


@dataclass(frozen=True)
class ReceivedEvent:
    """One event as a client received it from the event exchange."""

    routing_key: str
    body: dict[str, Any]
    correlation_id: str | None
    type: str | None
    persistent: bool
    #: The event's own AMQP message id (the service gives every publish a fresh one).
    message_id: str | None = None
    #: ``time.monotonic()`` when the test received it.
    received_at: float = 0.0
    #: Delivered again by the broker (after a reconnect of the receiving client).
    redelivered: bool = False
    #: Its AMQP headers (the trace context).
    headers: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, message: AbstractIncomingMessage) -> ReceivedEvent:
        return cls(
            routing_key=message.routing_key or "",
            body=json.loads(message.body),
            correlation_id=message.correlation_id,
            type=message.type,
            persistent=message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT,
            message_id=message.message_id,
            received_at=time.monotonic(),
            redelivered=bool(message.redelivered),
            headers=dict(message.headers or {}),
        )

    @property
    def room(self) -> str:
        return str(self.body.get("room"))

    @property
    def participant(self) -> str:
        return str(self.body.get("participant"))

    @property
    def payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = self.body.get("payload", {})
        return payload

    @property
    def message(self) -> str:
        return str(self.payload.get("message"))


class SignalingClient:
    """Publishes to the command exchange and records every event on the event exchange."""

    def __init__(
        self,
        names: Names,
        *,
        name: str = "test-client",
        url: str = AMQP_URL,
        user_id: str | None = None,
        least_privilege: bool = False,
        binding: str = EVERY_EVENT,
    ) -> None:
        """``user_id`` goes on every command (RabbitMQ accepts only the connection's own user).
        ``least_privilege``: declare nothing but a server-named queue, as a controller's permissions
        allow (the exchanges are looked up, not declared); the connection is then not a robust one."""
        self.names = names
        self._name = name
        self._url = url
        self._user_id = user_id
        self._least_privilege = least_privilege
        self._binding = binding
        self.events: list[ReceivedEvent] = []
        self.dead_letters: list[AbstractIncomingMessage] = []
        self._changed = asyncio.Condition()

    async def __aenter__(self) -> SignalingClient:
        # aio-pika's robust channel names an unnamed queue itself (``amq_<uuid>``, to restore it after a
        # reconnect); only a plain one gets a server-named ``amq.gen-*`` queue, all a controller may use.
        connect = aio_pika.connect if self._least_privilege else aio_pika.connect_robust
        self.connection = await connect(self._url, client_properties={"connection_name": self._name})
        self.channel = await self.connection.channel()
        if self._least_privilege:
            self.commands = await self.channel.get_exchange(self.names.command_exchange)
            events = await self.channel.get_exchange(self.names.event_exchange)
            self.event_queue = await self.channel.declare_queue(exclusive=True, auto_delete=True)
        else:
            self.commands = await self.channel.declare_exchange(
                self.names.command_exchange, aio_pika.ExchangeType.TOPIC, durable=True
            )
            events = await self.channel.declare_exchange(
                self.names.event_exchange, aio_pika.ExchangeType.TOPIC, durable=True
            )
            self.event_queue = await self.channel.declare_queue(
                f"{self.names.prefix}.observer.{uuid.uuid4().hex[:6]}", exclusive=True, auto_delete=True
            )
        await self.event_queue.bind(events, routing_key=self._binding)
        await self.event_queue.consume(self._on_event, no_ack=True)
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.connection.close()

    async def _on_event(self, message: AbstractIncomingMessage) -> None:
        event = ReceivedEvent.of(message)
        async with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    async def send(
        self,
        room: str,
        participant: str,
        payload: dict[str, Any] | str | bytes,
        *,
        role: str = "user",
        kind: str | None = None,
        message_id: str | None = "auto",
        routing_key: str | None = None,
        raw: bytes | None = None,
        headers: dict[str, Any] | None = None,
    ) -> str | None:
        """Publish one command (with publisher confirms); returns its message id."""
        if raw is None:
            decoded = payload if isinstance(payload, dict) else json.loads(payload)
            raw = encode_command(room, participant, decoded, role=role, **({"kind": kind} if kind else {}))
        if message_id == "auto":
            message_id = uuid.uuid4().hex
        await self.commands.publish(
            aio_pika.Message(
                raw,
                content_type="application/json",
                message_id=message_id,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                user_id=self._user_id,
                headers=headers,
            ),
            routing_key=routing_key or command_routing_key(room),
        )
        return message_id

    async def wait_for(
        self, predicate: Callable[[ReceivedEvent], bool], *, count: int = 1, timeout: float = 10.0
    ) -> list[ReceivedEvent]:
        """Until ``count`` events match (returns them), or fail with what did arrive."""
        deadline = time.monotonic() + timeout
        async with self._changed:
            while True:
                matched = [event for event in self.events if predicate(event)]
                if len(matched) >= count:
                    return matched
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"expected {count} matching events, got {len(matched)}; all events: "
                        + json.dumps([e.body for e in self.events[-20:]])[:4000]
                    )
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)
                except TimeoutError:
                    continue

    async def reply(
        self, room: str, participant: str, payload: dict[str, Any], *, timeout: float = 10.0, **kwargs: Any
    ) -> ReceivedEvent:
        """Send a command and wait for the event that answers it (correlated by message id)."""
        message_id = await self.send(room, participant, payload, **kwargs)
        events = await self.wait_for(lambda e: e.correlation_id == message_id, timeout=timeout)
        return events[0]

    def events_for(self, room: str, participant: str | None = None) -> list[ReceivedEvent]:
        return [
            event
            for event in self.events
            if event.body["room"] == room and (participant is None or event.participant == participant)
        ]

    async def quiet(self, seconds: float = 0.3) -> None:
        """Let in-flight events arrive before asserting that something did not happen."""
        await asyncio.sleep(seconds)


async def delete_topology(
    names: Names,
    partitions: int = PARTITIONS,
    *,
    urls: Sequence[str] = (AMQP_URL,),
    queues: Iterable[str] = (),
) -> None:
    """Remove every exchange and queue the service declared for ``names``, and ``queues`` of the test's
    own (on the broker, or the first node of ``urls`` that answers). What is gone already is fine."""
    await delete_queues(
        [names.dead_letter, *names.partition_queues(partitions), *queues],
        urls=urls,
        exchanges=[names.command_exchange, names.event_exchange, names.dead_letter, names.hash_exchange],
    )


async def delete_queues(
    queues: Iterable[str], *, urls: Sequence[str] = (AMQP_URL,), exchanges: Iterable[str] = ()
) -> None:
    """Delete ``queues``, then ``exchanges``, each on a channel of its own (a failure closes its
    channel); what is absent is fine."""
    connection = await connect_failover(urls)
    async with connection:
        for queue in queues:
            with contextlib.suppress(Exception):
                await (await connection.channel()).queue_delete(queue)
        for exchange in exchanges:
            with contextlib.suppress(Exception):
                await (await connection.channel()).exchange_delete(exchange)


async def declare_partition_queues_as_before(names: Names, partitions: int, *, delivery_limit: int) -> None:
    """Partition queues ``<queue>.0`` to ``<queue>.<partitions - 1>`` with the arguments releases without
    the leader locator declared them with: what an upgraded service finds on a broker that ran an
    earlier release."""
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        for n in range(partitions):
            await channel.declare_queue(
                f"{names.queue}.{n}",
                durable=True,
                arguments={
                    "x-queue-type": "quorum",
                    "x-single-active-consumer": True,
                    "x-delivery-limit": delivery_limit,
                    "x-dead-letter-exchange": names.dead_letter,
                },
            )
