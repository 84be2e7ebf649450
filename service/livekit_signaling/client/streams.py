"""``EventStream``: the events of every room, a room, or a participant, as an async iterator."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from types import TracebackType

from livekit_signaling.client.answers import ReceivedEvent
from livekit_signaling.schemas.routing import EVERY_EVENT, participant_routing_key, room_events_binding
from livekit_signaling.transport.controller import ControllerLink

#: Events an ``EventStream`` holds for a reader that is behind, before it gives up.
STREAM_BUFFER = 10_000


class EventStreamOverflow(Exception):
    """The stream's reader fell ``STREAM_BUFFER`` events behind; the events after those were dropped."""


class EventStream:
    """Events of every room, of one room, or of one participant in a room, as they arrive::

        async with client.events(room) as events:
            async for received in events:  # ReceivedEvent
                ...

    Entering waits until the client's queue is bound for them; leaving lets the binding go. Copies of
    an event (same ``message_id``) are dropped.
    """

    def __init__(
        self,
        link: ControllerLink,
        streams: set[EventStream],
        *,
        room: str | None,
        participant: str | None,
        buffer: int,
        timeout: float,
    ) -> None:
        if participant is not None and room is None:
            raise ValueError("a participant's events need its room")
        self._link = link
        #: The client's open streams, which it offers every event (this one once entered).
        self._streams = streams
        self._timeout = timeout
        self._room = room
        self._participant = participant
        self._limit = buffer
        self._buffer: collections.deque[ReceivedEvent] = collections.deque()
        self._arrived = asyncio.Event()
        self._overflowed = False
        self._ended = False
        self._entered = False
        self._exit = contextlib.AsyncExitStack()

    @property
    def routing_key(self) -> str:
        """The binding it holds."""
        if self._room is None:
            return EVERY_EVENT
        if self._participant is None:
            return room_events_binding(self._room)
        return participant_routing_key(self._room, self._participant)

    async def __aenter__(self) -> EventStream:
        deadline = asyncio.get_running_loop().time() + self._timeout
        try:
            await self._exit.enter_async_context(self._link.binding(self.routing_key, deadline=deadline))
        except TimeoutError:
            await self._exit.aclose()
            raise
        self._exit.callback(self._streams.discard, self)
        self._streams.add(self)
        self._entered = True
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.end()
        await self._exit.aclose()

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> ReceivedEvent:
        if not self._entered:
            raise RuntimeError("enter the stream first: async with client.events(...) as events")
        while not self._buffer:
            if self._overflowed:
                raise EventStreamOverflow(f"a reader of {self.routing_key} fell {self._limit} events behind")
            if self._ended:
                raise StopAsyncIteration
            self._arrived.clear()
            await self._arrived.wait()
        return self._buffer.popleft()

    def offer(self, received: ReceivedEvent) -> None:
        """An event the client received: kept if it is one of this stream's."""
        if self._overflowed or self._ended:
            return
        if self._room is not None and received.room != self._room:
            return
        if self._participant is not None and received.participant != self._participant:
            return
        if len(self._buffer) >= self._limit:
            self._overflowed = True
        else:
            self._buffer.append(received)
        self._arrived.set()

    def end(self) -> None:
        """No more events: the reader gets those held, then the iteration stops."""
        self._ended = True
        self._arrived.set()
