"""The load generator: publishes commands as an upstream controller does (persistent, publisher confirms,
a bounded window of unconfirmed publishes) and receives every event, keeping per command id the time it
was published and the time its events arrived. It runs in the bench process, on its own connections."""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection
from aiormq import spec

from livekit_signaling.schemas.routing import EVERY_EVENT, command_routing_key
from livekit_signaling.transport.amqp import PERSISTENT, publish_confirmed
from livekit_signaling.transport.brokers import connect_failover
from testkit.amqp import encode_command
from testkit.processes import AMQP_URL, Names


@dataclass(frozen=True, slots=True)
class Command:
    message_id: str
    routing_key: str
    body: bytes


def command(
    room: str,
    participant: str,
    payload: dict[str, Any],
    *,
    role: str = "user",
    extra: dict[str, Any] | None = None,
) -> Command:
    """One encoded command envelope (``extra`` adds envelope fields only the baseline reads)."""
    body = encode_command(room, participant, payload, role=role, **(extra or {}))
    return Command(uuid.uuid4().hex, command_routing_key(room), body)


@dataclass
class Track:
    """What happened to one command: when it was published, when its events arrived."""

    sent: float = 0.0
    first: float = 0.0
    last: float = 0.0
    events: int = 0


@dataclass
class Collector:
    """Every event on the event exchange (bound to ``EVERY_EVENT``), counted by command id and by type."""

    tracks: dict[str, Track] = field(default_factory=dict)
    types: Counter[str] = field(default_factory=Counter)
    received: int = 0
    last_received: float = 0.0
    _target: int = 0
    _reached: asyncio.Event = field(default_factory=asyncio.Event)

    def on_event(self, message: AbstractIncomingMessage) -> None:
        now = time.perf_counter()
        self.received += 1
        self.last_received = now
        self.types[message.type or "?"] += 1
        cid = message.correlation_id
        if cid is not None:
            track = self.tracks.get(cid)
            if track is None:
                track = self.tracks[cid] = Track()
            if not track.events:
                track.first = now
            track.last = now
            track.events += 1
        if self.received >= self._target:
            self._reached.set()

    async def wait_total(self, total: int, timeout: float) -> bool:
        """Until ``total`` events in all arrived (True), or ``timeout`` seconds passed (False)."""
        self._target = total
        if self.received >= total:
            return True
        self._reached.clear()
        try:
            await asyncio.wait_for(self._reached.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def errors(self) -> int:
        return self.types.get("error", 0)


def _new_traceparent(sampled: float) -> str:
    """A controller span's context: a new trace, sampled with probability ``sampled``."""
    flags = "01" if sampled >= 1 or random.random() < sampled else "00"
    return f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-{flags}"


class LoadGenerator:
    """One connection publishes (confirms on), another consumes the events."""

    def __init__(
        self,
        names: Names,
        *,
        publish_urls: Sequence[str] = (AMQP_URL,),
        event_urls: Sequence[str] = (AMQP_URL,),
        traced: bool = False,
        sampled: float = 1.0,
    ) -> None:
        """``publish_urls``/``event_urls``: the broker, or a cluster's nodes in the order each connection
        tries them (so that publishing and receiving can start on other nodes than the target's).
        ``traced``: every command carries a ``traceparent`` of its own, as an instrumented controller's
        do, marked sampled for the ``sampled`` fraction of them (the controller's head sampling)."""
        self.names = names
        self._traced = traced
        self._sampled = sampled
        self._publish_urls = tuple(publish_urls)
        self._event_urls = tuple(event_urls)
        self.collector = Collector()
        self._connections: list[AbstractRobustConnection] = []
        self._channel: AbstractChannel | None = None
        #: When the measured part of a workload began (after its warm-up); ``bench/trace`` reads it.
        self.measured_from = 0.0

    async def __aenter__(self) -> LoadGenerator:
        publisher = await connect_failover(
            self._publish_urls, client_properties={"connection_name": "bench-pub"}
        )
        consumer = await connect_failover(
            self._event_urls, client_properties={"connection_name": "bench-sub"}
        )
        self._connections = [publisher, consumer]
        channel = self._channel = await publisher.channel(publisher_confirms=True)
        await channel.declare_exchange(self.names.command_exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        events_channel = await consumer.channel()
        events = await events_channel.declare_exchange(
            self.names.event_exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await events_channel.declare_queue(
            f"{self.names.prefix}.bench-events", exclusive=True, auto_delete=True
        )
        await queue.bind(events, routing_key=EVERY_EVENT)

        async def on_message(message: AbstractIncomingMessage) -> None:
            self.collector.on_event(message)

        await queue.consume(on_message, no_ack=True)
        return self

    async def __aexit__(self, *_: object) -> None:
        for connection in self._connections:
            await connection.close()

    async def publish(self, cmd: Command) -> None:
        """Publish one command and wait for the broker's confirm; its send time is kept.

        Through the service's own ``publish_confirmed``: aio-pika's ``Exchange.publish`` holds the
        channel's lock until each frame is flushed, so at a fixed rate the generator's own publishes
        queued behind each other and that wait was counted as the target's latency (for the baseline
        and the service alike)."""
        assert self._channel is not None
        track = self.collector.tracks.get(cmd.message_id)
        if track is None:
            track = self.collector.tracks[cmd.message_id] = Track()
        track.sent = time.perf_counter()
        await publish_confirmed(
            self._channel,
            cmd.body,
            exchange=self.names.command_exchange,
            routing_key=cmd.routing_key,
            properties=spec.Basic.Properties(
                content_type="application/json",
                message_id=cmd.message_id,
                delivery_mode=PERSISTENT,
                headers={"traceparent": _new_traceparent(self._sampled)} if self._traced else None,
            ),
            mandatory=False,
        )

    async def publish_all(self, commands: Iterable[Command], *, window: int = 256) -> None:
        """As fast as the broker confirms, with at most ``window`` publishes unconfirmed."""
        iterator = iter(commands)

        async def worker() -> None:
            for cmd in iterator:
                await self.publish(cmd)

        await asyncio.gather(*(worker() for _ in range(window)))

    async def publish_at_rate(self, commands: Sequence[Command], rate: float) -> float:
        """Open loop: command i is published at ``start + i / rate`` whatever the answers do; returns the
        largest lag behind that schedule (how well the generator kept up)."""
        loop = asyncio.get_running_loop()
        pending: set[asyncio.Task[None]] = set()
        self.measured_from = time.perf_counter()
        start = loop.time()
        worst_lag = 0.0
        for i, cmd in enumerate(commands):
            due = start + i / rate
            now = loop.time()
            if due > now:
                await asyncio.sleep(due - now)
                now = loop.time()
            worst_lag = max(worst_lag, now - due)
            task = asyncio.create_task(self.publish(cmd))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.gather(*pending)
        return worst_lag
