"""The console as a controller on RabbitMQ, through the package's client: it publishes commands as anyone
and sees every event pass, keeps both (``Traffic``) and sends them on to the open pages; as an instrumented
controller, it starts each command's trace and shows that trace's spans as they end."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Protocol

from livekit_signaling.client import (
    CommandTimeout,
    EventStreamOverflow,
    ExchangeNotFound,
    ReceivedEvent,
    Sent,
    UndecodableEvent,
)
from livekit_signaling.console.stream import LiveStream
from livekit_signaling.console.traffic import Traffic
from livekit_signaling.console.views import Refused, SentCommand
from livekit_signaling.console.waterfall import waterfall
from livekit_signaling.schemas import codec
from livekit_signaling.schemas.commands import CreateNewAccessToken, Kind, Role
from livekit_signaling.schemas.events import CredentialsEvent
from livekit_signaling.schemas.routing import command_routing_key
from livekit_signaling.telemetry.tracing.kept import KeptSpan
from livekit_signaling.transport.controller import LinkError

log = logging.getLogger(__name__)

AMQP_RETRY_SECONDS = 2.0
#: How soon the console looks again for the service's exchanges while the service starts.
EXCHANGES_RETRY_SECONDS = 0.2


class CommandLink(Protocol):
    """What the console needs of RabbitMQ; ``livekit_signaling.client.SignalingClient`` is the real one."""

    @property
    def is_connected(self) -> bool: ...

    async def open(self) -> None: ...

    def events(self) -> AbstractAsyncContextManager[AsyncIterator[ReceivedEvent]]: ...

    async def publish_raw(self, room: str, body: bytes, *, message_id: str | None = None) -> Sent: ...

    async def create_new_access_token(
        self,
        room: str,
        participant: str,
        *,
        role: Role,
        kind: Kind,
        message_id: str | None,
        timeout: float | None,  # noqa: ASYNC109 - the client's own
    ) -> CredentialsEvent: ...

    async def close(self) -> None: ...


class CommandTraces(Protocol):
    """Traces of the commands the console sends (``telemetry.tracing.kept.ControllerTraces``)."""

    def publishing(self, routing_key: str, message_id: str) -> AbstractContextManager[str]:
        """The console's span around publishing one command, current inside (so the client publishes
        its context with the command); yields the trace id."""

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
        #: Told of the room of every command and event (the rooms view re-reads it).
        self._on_room = on_room
        self._traces = traces
        #: Traces with new spans not yet sent to the pages.
        self._changed_traces: set[str] = set()
        if traces is not None:
            loop = asyncio.get_running_loop()

            def span_ended(trace_id: str) -> None:  # from whichever thread ended the span
                loop.call_soon_threadsafe(self._trace_changed, trace_id)

            traces.on_trace(span_ended)

    @property
    def is_connected(self) -> bool:
        return self._link.is_connected

    async def run(self) -> None:
        """Connect, then record every event until cancelled (the client reconnects by itself)."""
        await self.connect()
        await self.watch()

    async def connect(self) -> None:
        """Once RabbitMQ answers and the service declared its exchanges: the console starts with the
        service, which declares them once it is connected itself."""
        while True:
            try:
                await self._link.open()
            except ExchangeNotFound:
                await asyncio.sleep(EXCHANGES_RETRY_SECONDS)
            except (LinkError, OSError) as error:
                log.warning("console: RabbitMQ not ready (%s); retrying", error)
                await asyncio.sleep(AMQP_RETRY_SECONDS)
            else:
                return

    async def watch(self) -> None:
        """Every event on the event exchange, into the traffic and to the pages, until cancelled."""
        log.info("console: watching the event exchange")
        while True:
            try:
                async with self._link.events() as events:
                    async for received in events:
                        self._on_event(received)
                return
            except (EventStreamOverflow, LinkError, TimeoutError) as error:
                log.warning("console: event stream interrupted (%s); watching again", error)
                await asyncio.sleep(AMQP_RETRY_SECONDS)

    async def close(self) -> None:
        await self._link.close()

    def _on_event(self, received: ReceivedEvent | UndecodableEvent) -> None:
        if isinstance(received, UndecodableEvent):
            event, command = self._traffic.record_event(
                received.routing_key, received.correlation_id, received.body
            )
        else:
            event, command = self._traffic.record_event(
                received.routing_key, received.correlation_id, received.event
            )
        self._stream.broadcast("event", event)
        if command is not None:
            self._stream.broadcast("command", command)
        self._on_room(event.room)

    def on_undecodable(self, event: UndecodableEvent) -> None:
        """For the client's ``on_undecodable``: a body that is not an event is shown as text."""
        self._on_event(event)

    async def publish(self, room: str, body: bytes) -> SentCommand:
        """Publish ``body`` to ``room.<room>`` as it is, valid envelope or not."""
        message_id = uuid.uuid4().hex
        with self._traced(room, message_id) as trace_id:
            command = self._record(room, message_id, body, trace_id)
            try:
                await self._link.publish_raw(room, body, message_id=message_id)
            except (LinkError, CommandTimeout) as error:
                raise Refused(503, str(error)) from None
        self._stream.broadcast("command", command)
        return command

    async def credentials(
        self,
        room: str,
        participant: str,
        *,
        role: Role,
        kind: Kind,
        timeout: float,  # noqa: ASYNC109
    ) -> CredentialsEvent:
        """Ask for fresh credentials as ``participant``, shown on the page as a command it sent;
        ``CommandError``/``CommandTimeout`` as the client raises them."""
        message_id = uuid.uuid4().hex
        body = codec.encode_command(room, participant, CreateNewAccessToken(), role=role, kind=kind)
        with self._traced(room, message_id) as trace_id:
            self._stream.broadcast("command", self._record(room, message_id, body, trace_id))
            try:
                return await self._link.create_new_access_token(
                    room, participant, role=role, kind=kind, message_id=message_id, timeout=timeout
                )
            except LinkError as error:
                raise Refused(503, str(error)) from None

    def _record(self, room: str, message_id: str, body: bytes, trace_id: str | None) -> SentCommand:
        """Keep a command about to be published (before: its answer can arrive before the confirm)."""
        if not self._link.is_connected:
            raise Refused(503, "not connected to RabbitMQ")
        command = self._traffic.record_command(message_id, command_routing_key(room), body, trace_id=trace_id)
        self._on_room(room)
        return command

    # -- the traces of the commands it sends --------------------------------------------------------

    def _traced(self, room: str, message_id: str) -> AbstractContextManager[str | None]:
        if self._traces is None:
            return contextlib.nullcontext(None)
        return self._traces.publishing(command_routing_key(room), message_id)

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
