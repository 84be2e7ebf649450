"""The command pipeline without a broker: a transport that confirms every event as it is handed over and
records what was published, acknowledged and dead-lettered. For the tracing tests (the spans of every
command type) and the bench's in-process measure of what tracing costs a command (W10)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from livekit_signaling.pipeline.ports import CommandTransport, Delivery, OutgoingEvent, Publication


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


def _typed(transport: ConfirmingTransport) -> CommandTransport:
    return transport  # mypy checks that the fake is the port
