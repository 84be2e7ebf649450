"""The live stream (``GET /console/stream``): server-sent events to every open page, ``reset`` on connect,
then ``event``, ``command`` and ``rooms`` as they happen, each page with a bounded backlog."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from aiohttp import web

from livekit_signaling.console.views import to_json

#: A comment line keeps idle streams open through proxies and lets a dead client be noticed.
KEEPALIVE_SECONDS = 15.0
KEEPALIVE = b": keep-alive\n\n"
#: Messages queued for one page; a page that falls this far behind is disconnected (its EventSource
#: reconnects and starts over from a ``reset``).
SUBSCRIBER_BACKLOG = 1000


def server_sent_event(kind: str, value: object) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + to_json(value) + b"\n\n"


class LiveStream:
    def __init__(self) -> None:
        #: One queue per open page; None in a queue ends that page's stream.
        self._subscribers: set[asyncio.Queue[bytes | None]] = set()

    @property
    def is_watched(self) -> bool:
        """Whether a page is open (otherwise nothing needs to be read for one)."""
        return bool(self._subscribers)

    def broadcast(self, kind: str, value: object) -> None:
        if not self._subscribers:
            return
        message = server_sent_event(kind, value)
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(message)
            except asyncio.QueueFull:
                # Too far behind: drop it; the page reconnects and gets a fresh reset.
                self._subscribers.discard(queue)
                queue.get_nowait()
                queue.put_nowait(None)

    def end(self) -> None:
        """End every open stream (at shutdown, which would otherwise wait for them)."""
        for queue in self._subscribers:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)

    async def serve(self, request: web.Request, reset: Callable[[], Awaitable[object]]) -> web.StreamResponse:
        """One page's stream: ``reset`` (what ``reset`` returns), then every broadcast, until it goes."""
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(SUBSCRIBER_BACKLOG)
        # Subscribed before the reset is built: what arrives meanwhile is sent twice rather than lost;
        # the page keys events by seq and commands by message id.
        self._subscribers.add(queue)
        try:
            await response.write(server_sent_event("reset", await reset()))
            while True:
                try:
                    message = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
                except TimeoutError:
                    message = KEEPALIVE
                if message is None:
                    break
                await response.write(message)
        except ConnectionResetError:
            pass  # the page went away
        finally:
            self._subscribers.discard(queue)
        return response
