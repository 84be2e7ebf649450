"""A small TCP proxy for fault injection (between the service and RabbitMQ, Redis or LiveKit), running its
own asyncio loop in a background thread.

Modes (``set_mode`` returns once the change has been applied to every open connection):

- ``forward``: bytes pass both ways, as if the proxy were not there.
- ``blackhole``: connections are accepted and read, but nothing is forwarded or answered, in either
  direction (a network that silently drops packets). Connections that were open when the blackhole
  began stay open and silent; when it is lifted they are reset (their byte streams have gaps).
- ``reset``: every open connection is closed with a TCP RST, and so is every new one as soon as it is
  accepted.
- ``closed``: the listening socket is closed (new connections are refused, as when the server's process
  is gone) and every open connection is reset; leaving the mode listens again on the same port.

Only loopback addresses are used: the proxy listens on 127.0.0.1 and forwards to the given target.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

Mode = Literal["forward", "blackhole", "reset", "closed"]
MODES: tuple[Mode, ...] = ("forward", "blackhole", "reset", "closed")

T = TypeVar("T")

#: Called in the proxy's thread with each chunk it forwards: (the connection, towards the server?, bytes).
Observer = Callable[[object, bool, bytes], None]

_CHUNK = 64 * 1024


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST instead of FIN: linger on, timeout zero, then close."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Connection:
    """One accepted client connection and, when forwarding, its upstream connection."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.silenced = False  # true once a blackhole swallowed some of its bytes

    def reset(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None:
                _reset(writer)
        for task in self.tasks:
            task.cancel()


class TcpProxy:
    """``TcpProxy(host, port).start()`` listens on 127.0.0.1:``.port`` and forwards to host:port;
    ``TcpProxy.for_url(url, default_port)`` does so for the server of ``url``, and ``.url`` is ``url``
    through the proxy."""

    def __init__(
        self, target_host: str, target_port: int, *, listen_port: int = 0, target_url: str | None = None
    ) -> None:
        self.target = (target_host, target_port)
        self._target_url = target_url
        self.port = listen_port
        self.mode: Mode = "forward"
        self.accepted = 0
        self.reset_count = 0
        #: Sees every chunk forwarded (the round-trip counters parse the protocols with it).
        self.observer: Observer | None = None
        self._connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)

    @classmethod
    def for_url(cls, url: str, default_port: int) -> TcpProxy:
        """A proxy in front of the host and port of ``url`` (``scheme://[user@]host[:port]/...``)."""
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or default_port, target_url=url)

    # -- lifecycle (called from the test's thread) ---------------------------------------------------

    def start(self) -> TcpProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def set_mode(self, mode: Mode) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown proxy mode {mode!r}")
        self._call(self._set_mode(mode))

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    @property
    def url(self) -> str:
        """The URL the proxy was made for (``for_url``) with the proxy's host and port: a client of it
        goes through the proxy."""
        assert self._target_url is not None, "a proxy made with for_url"
        parts = urlsplit(self._target_url)
        credentials = parts.netloc.rpartition("@")[0]
        netloc = f"{credentials}@127.0.0.1:{self.port}" if credentials else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    # -- inside the proxy's loop ---------------------------------------------------------------------

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True, backlog=256
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close_listener(self) -> None:
        if self._server is not None:
            self._server.close()
            # Do not wait_closed(): that waits for the handlers of open connections too.
            self._server = None

    async def _shutdown(self) -> None:
        await self._close_listener()
        self._reset_all()

    def _reset_all(self, *, only_silenced: bool = False) -> None:
        for connection in list(self._connections):
            if only_silenced and not connection.silenced:
                continue
            connection.reset()
            self.reset_count += 1
            self._connections.discard(connection)

    async def _set_mode(self, mode: Mode) -> None:
        previous, self.mode = self.mode, mode
        if mode in ("reset", "closed"):
            self._reset_all()
        if mode == "closed":
            await self._close_listener()
        elif previous == "closed":
            await self._listen()
        if mode == "forward" and previous == "blackhole":
            # Bytes were dropped on these: their streams cannot be resumed.
            self._reset_all(only_silenced=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.mode in ("reset", "closed"):
            self.reset_count += 1
            _reset(writer)
            return
        connection = _Connection(writer)
        self._connections.add(connection)
        try:
            if self.mode == "blackhole":
                connection.silenced = True
                connection.tasks = [asyncio.create_task(self._pump(reader, None, connection))]
                await asyncio.gather(*connection.tasks, return_exceptions=True)
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError:
                _reset(writer)
                return
            connection.upstream = up_writer
            connection.tasks = [
                asyncio.create_task(self._pump(reader, up_writer, connection)),
                asyncio.create_task(self._pump(up_reader, writer, connection)),
            ]
            await asyncio.gather(*connection.tasks, return_exceptions=True)
        finally:
            self._connections.discard(connection)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter | None, connection: _Connection
    ) -> None:
        """Copy reader to writer while forwarding; swallow while blackholed; on EOF close the other side
        (but never while blackholed: a silent network does not report closes either)."""
        try:
            while True:
                data = await reader.read(_CHUNK)
                if self.mode == "blackhole":
                    connection.silenced = True
                    if not data:
                        # The peer closed; stay silent and keep the other side open until reset.
                        await asyncio.Event().wait()
                    continue
                if not data:
                    break
                if writer is None:
                    continue
                if self.observer is not None:
                    self.observer(connection, writer is connection.upstream, data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            return
        if self.mode != "blackhole":
            for side in (connection.client, connection.upstream):
                if side is not None:
                    with contextlib.suppress(Exception):
                        side.close()
