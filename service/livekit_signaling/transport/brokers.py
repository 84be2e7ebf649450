"""Several RabbitMQ addresses (the nodes of one cluster) and a robust connection that moves between them.

aio-pika's ``connect_robust`` reconnects to the one URL it was given, for ever: with the node it was on
stopped, a client waits although the other nodes serve every (quorum) queue. ``FailoverConnection`` is
aio-pika's ``RobustConnection`` with one change: each time a connection is lost or an attempt fails, the
next attempt goes to the next address, in turn. Everything else, in particular the restoration of
channels, exchanges, queues, bindings, QoS and consumers after a reconnect, is aio-pika's own.

The hook is ``_on_connection_close``: aio-pika calls it when an established connection closes and also
when a connection attempt fails (``aio_pika.abc.UnderlayConnection.connect`` passes the error to it
before re-raising), and its reconnection loop reads ``self.url`` afresh for every attempt.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import aio_pika
from aio_pika import RobustConnection
from aio_pika.abc import AbstractConnection
from aio_pika.connection import make_url
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from yarl import URL

from livekit_signaling.transport.refusals import explain_refusal

log = logging.getLogger(__name__)

SCHEMES = ("amqp", "amqps")


def split_broker_urls(value: str) -> tuple[str, ...]:
    """One URL or several separated by commas (nodes of one cluster), each checked.

    A comma inside a URL (in a password, say) must be percent-encoded (``%2C``). Errors name the
    address by its position only: the URLs carry credentials."""
    urls = tuple(part.strip() for part in value.split(","))
    for position, url in enumerate(urls, start=1):
        where = f"address {position} of {len(urls)}: " if len(urls) > 1 else ""
        if not url:
            raise ValueError(f"{where}empty (a stray comma?)")
        parsed = URL(url)
        if parsed.scheme not in SCHEMES or not parsed.host:
            raise ValueError(f"{where}expected an amqp://host or amqps://host URL")
    return urls


def node_label(url: str | URL) -> str:
    """``host:port/vhost`` of a broker URL: how logs, ``/readyz`` and metrics name a node. Never the
    user name or password."""
    parsed = URL(url)
    host = parsed.host or "localhost"
    if ":" in host:
        host = f"[{host}]"
    port = parsed.port or (5671 if parsed.scheme == "amqps" else 5672)
    return f"{host}:{port}{parsed.raw_path or '/'}"


class FailoverConnection(RobustConnection):
    """A robust connection over several addresses of one cluster, tried in turn."""

    def __init__(self, urls: Sequence[URL], *, first: int = 0, **kwargs: Any) -> None:
        if not urls:
            raise ValueError("no broker address")
        super().__init__(urls[first], **kwargs)
        self._urls = tuple(urls)
        self._index = first

    @property
    def node(self) -> str:
        """The node connected to, or the one the next attempt goes to."""
        return node_label(self.url)

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(node_label(url) for url in self._urls)

    def __str__(self) -> str:
        # aio-pika names the connection by str() in its own log lines: the node, no user name.
        return self.node

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        if not (self._close_called or self.is_closed):
            self._move_on(closing, was_connected=self.connected.is_set())
        await super()._on_connection_close(closing)

    def _move_on(self, closing: asyncio.Future[Any], *, was_connected: bool) -> None:
        left = self.node
        if len(self._urls) > 1:
            self._index = (self._index + 1) % len(self._urls)
            self.url = self._urls[self._index]
        reason = _reason(closing)
        if _refused(closing):
            # A configuration error, not a lost node: the service says it once, with its fix.
            log.debug("RabbitMQ node %s refused the service (%s); next: %s", left, reason, self.node)
        elif was_connected:
            log.warning("connection to RabbitMQ node %s lost (%s); next: %s", left, reason, self.node)
        else:
            log.warning("RabbitMQ node %s did not answer (%s); next: %s", left, reason, self.node)


def _refused(closing: asyncio.Future[Any]) -> bool:
    if not closing.done() or closing.cancelled():
        return False
    error = closing.exception()
    return error is not None and explain_refusal(error) is not None


def _reason(closing: asyncio.Future[Any]) -> str:
    if not closing.done():
        return "closing"
    if closing.cancelled():
        return "cancelled"
    error = closing.exception()
    return type(error).__name__ if error is not None else "closed"


async def connect_failover(
    urls: Sequence[str],
    *,
    connect_timeout: float | None = None,
    client_properties: dict[str, Any] | None = None,
    **parameters: Any,
) -> FailoverConnection:
    """Connect to the first address that answers, as ``aio_pika.connect_robust`` does for one.

    ``parameters`` (``heartbeat``, ``reconnect_interval`` …) go into every address's query, as
    ``connect_robust`` puts them into its one URL. ``connect_timeout`` bounds each attempt, later
    reconnection attempts included, so that an unreachable node (a blackholed address rather than a
    refused connection) cannot hold up the move to the next. Raises the last address's error when none
    answered."""
    addresses = [make_url(url, **parameters) for url in urls]
    last_error: BaseException | None = None
    for first in range(len(addresses)):
        connection = FailoverConnection(
            addresses, first=first, client_properties=client_properties, **parameters
        )
        try:
            await connection.connect(timeout=connect_timeout)
        except (*CONNECTION_EXCEPTIONS, TimeoutError) as error:
            last_error = error
            await connection.close()
            continue
        return connection
    assert last_error is not None
    raise last_error


async def connect_first(
    urls: Sequence[str],
    *,
    connect_timeout: float | None = None,
    client_properties: dict[str, Any] | None = None,
) -> tuple[AbstractConnection, str]:
    """A plain (not robust) connection to the first address that answers, and that address: for a
    controller (``controller.ControllerLink`` reconnects by itself). Its server-named queues keep the
    broker's ``amq.gen-`` names, which a controller's permissions allow; a robust connection names such
    queues itself (``amq_<uuid>``) so as to re-declare them, and those names a controller may not use.
    Raises the last address's error when none answered."""
    last_error: BaseException | None = None
    for url in urls:
        try:
            connection = await aio_pika.connect(
                url, timeout=connect_timeout, client_properties=client_properties
            )
        except (*CONNECTION_EXCEPTIONS, TimeoutError) as error:
            last_error = error
            continue
        return connection, url
    assert last_error is not None
    raise last_error
