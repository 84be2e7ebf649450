"""The command pipeline without a broker: a transport that confirms every event as it is handed over and
records what was published, acknowledged and dead-lettered, and the pipeline built on it with the real
handler, tokens and LiveKit adapter (against an emulator). For the tracing tests (the spans of every
command type) and the bench's in-process measure of what tracing costs a command (W10)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from livekit_signaling.domain.handler import CommandHandler, ConnectionUrls
from livekit_signaling.domain.permissions import PublishPolicy
from livekit_signaling.domain.ports import StateStore
from livekit_signaling.livekit.adapter import LiveKitAdapter
from livekit_signaling.livekit.tokens import TokenMinter
from livekit_signaling.pipeline.ports import CommandTransport, Delivery, OutgoingEvent, Publication
from livekit_signaling.pipeline.processor import CommandProcessor
from livekit_signaling.telemetry.metrics import Metrics
from livekit_signaling.telemetry.tracing import NO_TRACING, Tracing


class _Channel:
    is_closed = False


def _confirmed() -> asyncio.Future[None]:
    confirm: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    confirm.set_result(None)
    return confirm


@dataclass
class ConfirmingTransport:
    """Implements the pipeline's ``CommandTransport``: one channel that never closes, every delivery
    current, every event confirmed at once."""

    #: The events in the order they were handed over.
    published: list[OutgoingEvent] = field(default_factory=list)
    #: Message ids of the acknowledged commands, in order.
    acked: list[str] = field(default_factory=list)
    #: (reason, headers) of each dead letter.
    dead_letters: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    subscribed_partitions: Sequence[int] = ()
    active_partitions: set[int] = field(default_factory=set)
    is_connected: bool = True
    channel: _Channel = field(default_factory=_Channel)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def until(self, condition: Callable[[], bool], *, timeout: float = 5.0) -> None:
        """Until ``condition`` holds (checked whenever something was acknowledged)."""
        async with asyncio.timeout(timeout):
            while not condition():
                self._changed.clear()
                await self._changed.wait()

    def is_current(self, delivery: Delivery) -> bool:
        return True

    async def ack(self, delivery: Delivery) -> bool:
        self.acked.append(delivery.message_id or "")
        self._changed.set()
        return True

    async def requeue(self, delivery: Delivery) -> bool:
        return True

    async def wait_connected(self, seconds: float) -> bool:
        return True

    async def publishing_channel(self) -> _Channel:
        return self.channel

    def publish_on(self, channel: object, events: Sequence[OutgoingEvent]) -> Publication:
        self.published += events
        return Publication(self.channel, [_confirmed() for _ in events])

    async def dead_letter(
        self, body: bytes, *, reason: str, headers: dict[str, Any], routing_key: str
    ) -> None:
        self.dead_letters.append((reason, headers))
        self._changed.set()

    async def release(self, partition: int) -> None:
        pass

    async def subscribe(self, partition: int) -> None:
        pass

    async def partitions_not_consumed(self) -> list[int]:
        return []


def _typed(transport: ConfirmingTransport) -> CommandTransport:
    return transport  # mypy checks that the fake is the port


@dataclass
class Pipeline:
    processor: CommandProcessor
    transport: ConfirmingTransport
    livekit: LiveKitAdapter

    async def close(self) -> None:
        await self.processor.drain(5.0)
        await self.livekit.close()


async def start_pipeline(
    livekit_url: str,
    store: StateStore,
    *,
    api_key: str,
    api_secret: str,
    tracing: Tracing = NO_TRACING,
    trace_configs: Sequence[aiohttp.TraceConfig] = (),
    attempts: int = 3,
    room_cache_seconds: float = 0.0,
) -> Pipeline:
    """The processor, the handler, tokens and the LiveKit adapter (started) as the service wires them,
    on a ``ConfirmingTransport``; every part given ``tracing``."""
    livekit = LiveKitAdapter(
        url=livekit_url,
        api_key=api_key,
        api_secret=api_secret,
        request_timeout_seconds=2.0,
        attempts=attempts,
        max_concurrent_requests=64,
        metrics=Metrics(),
        room_cache_seconds=room_cache_seconds,
        tracing=tracing,
        trace_configs=trace_configs,
    )
    await livekit.start()
    transport = ConfirmingTransport()
    processor = CommandProcessor(
        handler=CommandHandler(
            livekit=livekit,
            tokens=TokenMinter(api_key, api_secret, ttl_seconds=60),
            store=store,
            policy=PublishPolicy(),
            urls=ConnectionUrls(public_url="wss://public"),
        ),
        store=store,
        transport=transport,
        metrics=Metrics(),
        command_deadline_seconds=2,
        max_body_bytes=65536,
        delivery_limit=5,
        transient_retry_seconds=1,
        tracing=tracing,
    )
    return Pipeline(processor, transport, livekit)
