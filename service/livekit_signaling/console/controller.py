"""The console as a controller on RabbitMQ: it publishes commands as anyone and sees every event pass,
keeps both (``Traffic``) and sends them on to the open pages; as an instrumented controller, it starts
each command's trace and shows that trace's spans as they end."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Protocol

from livekit_signaling.console.stream import LiveStream
from livekit_signaling.console.traffic import Traffic
from livekit_signaling.console.views import Refused, SentCommand
from livekit_signaling.console.waterfall import waterfall
from livekit_signaling.schemas import codec
from livekit_signaling.schemas.commands import Envelope
from livekit_signaling.schemas.events import EventEnvelope
from livekit_signaling.schemas.routing import command_routing_key
from livekit_signaling.telemetry.tracing.kept import KeptSpan, SentTrace
from livekit_signaling.transport.controller import WatchedEvent

log = logging.getLogger(__name__)

AMQP_RETRY_SECONDS = 2.0


class CommandLink(Protocol):
    """What the console needs of RabbitMQ; ``transport.controller.ControllerLink`` is the real one."""

    @property
    def is_connected(self) -> bool: ...

    async def connect(self, on_event: Callable[[WatchedEvent], None]) -> None: ...

    async def publish_command(
        self, routing_key: str, body: bytes, message_id: str, *, headers: dict[str, str] | None = None
    ) -> None: ...

    async def close(self) -> None: ...


class CommandTraces(Protocol):
    """Traces of the commands the console sends (``telemetry.tracing.kept.ControllerTraces``)."""

    def publishing(self, routing_key: str, message_id: str) -> AbstractContextManager[SentTrace]: ...

    def spans(self, trace_id: str) -> list[KeptSpan]: ...

    def on_trace(self, callback: Callable[[str], None]) -> None: ...


#: Spans of a trace end in bursts (a command's calls, its publication, itself): the page is told once.
TRACE_UPDATE_SECONDS = 0.05


class Controller:
    def __init__(
        self,
        link: CommandLink,
        *,
        traffic: Traffic,
        stream: LiveStream,
        on_room: Callable[[str], None],
        traces: CommandTraces | None = None,
    ) -> None:
        self._link = link
        self._traffic = traffic
        self._stream = stream
        self._traces = traces
        #: Traces with new spans not yet sent to the pages.
        self._changed_traces: set[str] = set()
        if traces is not None:
            loop = asyncio.get_running_loop()

            def span_ended(trace_id: str) -> None:  # from whichever thread ended the span
                loop.call_soon_threadsafe(self._trace_changed, trace_id)

            traces.on_trace(span_ended)
        #: Told of the room of every command and event (the rooms view re-reads it).
        self._on_room = on_room
        #: The first answer to each command published with ``ask``, by message id.
        self._waiting: dict[str, asyncio.Future[EventEnvelope]] = {}

    @property
    def is_connected(self) -> bool:
        return self._link.is_connected

    async def run(self) -> None:
        """Connect once RabbitMQ answers (the service waits for it too); the link reconnects itself."""
        while True:
            try:
                await self._link.connect(self._on_event)
            except Exception as error:
                log.warning("console: RabbitMQ not reachable (%s); retrying", type(error).__name__)
                await asyncio.sleep(AMQP_RETRY_SECONDS)
            else:
                log.info("console: watching the event exchange")
                return

    async def close(self) -> None:
        await self._link.close()

    def _on_event(self, watched: WatchedEvent) -> None:
        event, command = self._traffic.record_event(watched.routing_key, watched.correlation_id, watched.body)
        self._stream.broadcast("event", event)
        if command is not None:
            self._stream.broadcast("command", command)
            waiting = self._waiting.get(command.message_id)
            if waiting is not None and not waiting.done() and isinstance(event.body, EventEnvelope):
                waiting.set_result(event.body)
        self._on_room(event.room)

    async def publish(self, room: str, body: bytes) -> SentCommand:
        """Publish ``body`` to ``room.<room>`` as it is, valid envelope or not."""
        return await self._publish(room, body, uuid.uuid4().hex)

    async def ask(self, envelope: Envelope, *, timeout: float) -> EventEnvelope:  # noqa: ASYNC109
        """Publish ``envelope`` and return the first event that answers it; TimeoutError without one."""
        message_id = uuid.uuid4().hex
        # Waiting before publishing: the answer can arrive before the confirm does.
        answer = self._waiting[message_id] = asyncio.get_running_loop().create_future()
        try:
            await self._publish(envelope.room, codec.encode(envelope), message_id)
            return await asyncio.wait_for(answer, timeout)
        finally:
            del self._waiting[message_id]

    async def _publish(self, room: str, body: bytes, message_id: str) -> SentCommand:
        if not self._link.is_connected:
            raise Refused(503, "not connected to RabbitMQ")
        routing_key = command_routing_key(room)
        traced = (
            self._traces.publishing(routing_key, message_id)
            if self._traces is not None
            else contextlib.nullcontext(None)
        )
        with traced as trace:
            # Recorded before publishing: the answer can arrive before the confirm does.
            command = self._traffic.record_command(
                message_id, routing_key, body, trace_id=trace.trace_id if trace is not None else None
            )
            self._on_room(room)
            try:
                await self._link.publish_command(
                    routing_key, body, message_id, headers=trace.headers if trace is not None else None
                )
            except ConnectionError as error:
                raise Refused(503, str(error)) from None
        self._stream.broadcast("command", command)
        return command

    def _trace_changed(self, trace_id: str) -> None:
        if not self._changed_traces:
            asyncio.get_running_loop().call_later(TRACE_UPDATE_SECONDS, self._send_traces)
        self._changed_traces.add(trace_id)

    def _send_traces(self) -> None:
        """The changed traces of sent commands, again with their commands, as waterfalls."""
        changed, self._changed_traces = self._changed_traces, set()
        for trace_id in changed:
            command = self._traffic.command_of_trace(trace_id)
            if command is not None and self._traces is not None:
                command.trace = waterfall(self._traces.spans(trace_id))
                self._stream.broadcast("command", command)
