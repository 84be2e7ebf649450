"""A controller's side of the contract on RabbitMQ: confirmed commands out, events in.

``ControllerLink`` is the AMQP part of ``livekit_signaling.client.SignalingClient`` (and through it of
``livekit-signaling send``/``watch`` and the dev console). It needs no more than a controller's RabbitMQ
permissions (``deploy/rabbitmq/definitions.json``): the service's exchanges are looked up, never declared,
and the only queue is an exclusive, server-named (``amq.gen-…``) one, bound to the event exchange with
the routing keys the client holds at the moment. Commands are published persistent, ``mandatory`` and
confirmed, with the ``user_id`` of the connection's own user (what ``SIGNALING_TRUSTED_PUBLISHERS``
checks; RabbitMQ refuses any other).

Connections are plain aio-pika connections, one at a time, to the addresses of one cluster in turn.
aio-pika's robust connection is not used: to re-declare a server-named queue after a reconnect it names
the queue itself (``amq_<uuid>``), a name a controller may not declare. So after a lost connection the
link opens the next address that answers, declares a new server-named queue and binds it again with
every key still held, and a publish that the lost connection never confirmed is published again on the
new one, with the same ``message_id`` (the service runs a command once per id within its
``DEDUP_WINDOW_SECONDS``). Events published while no queue was bound are not seen by this link (the
service dead-letters an event that no queue takes, as ``unroutable_event``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
)
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from aiormq import spec

from livekit_signaling.schemas.routing import EVERY_EVENT, seen_by_every_event
from livekit_signaling.telemetry.tracing.carrier import current_headers
from livekit_signaling.transport.amqp import CONNECTION_ERRORS, PERSISTENT, publish_confirmed
from livekit_signaling.transport.brokers import connect_first, node_label
from livekit_signaling.transport.refusals import explain_refusal

log = logging.getLogger(__name__)

#: The broker refusing an operation of this user on a channel (and closing that channel): not an
#: outage, so not retried.
_REFUSALS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.ChannelAccessRefused,
    aiormq.exceptions.ChannelPreconditionFailed,
)
#: The first pause before publishing a command the broker refused again (doubling up to a second).
REJECTED_RETRY_SECONDS = 0.1
#: A connection or channel gone, or a broker that does not answer.
_LOST: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, TimeoutError)


@dataclass(frozen=True, slots=True)
class IncomingEvent:
    """A message from the event exchange, as it came."""

    routing_key: str
    correlation_id: str | None
    message_id: str | None
    body: bytes


class LinkError(Exception):
    """Base of what the link raises besides ``TimeoutError``."""


class BrokerUnavailable(LinkError, ConnectionError):
    """No RabbitMQ node answered, or the link is closed."""


class ExchangeNotFound(LinkError, LookupError):
    """An exchange of the service does not exist (the service has not run on this vhost yet, or the
    client names other exchanges than the service's ``SIGNALING_*_EXCHANGE``)."""


class NotPermitted(LinkError, PermissionError):
    """RabbitMQ refused an operation of this user (its permissions, topic permissions or ``user_id``);
    the message is the broker's."""


class CommandUnroutable(LinkError):
    """The broker returned a command (mandatory): no queue is bound for its routing key on the command
    exchange, so the service cannot receive it (the service is not running on these exchanges)."""

    def __init__(self, routing_key: str) -> None:
        super().__init__(
            f"no queue is bound for {routing_key!r} on the command exchange: is the service running "
            "with this SIGNALING_COMMAND_EXCHANGE on this vhost?"
        )
        self.routing_key = routing_key


class CommandRejected(LinkError):
    """The broker kept refusing to take a command until the deadline (negative confirms)."""


def connection_user(url: str) -> str | None:
    """The RabbitMQ user a connection to ``url`` logs in as, as aiormq does it: the URL's user, else
    ``guest``. None with ``?auth=external`` (the broker takes the user from the client certificate, so
    the ``user_id`` to claim is not known here)."""
    parts = urlsplit(url)
    if parse_qs(parts.query).get("auth", ["plain"])[-1].lower() == "external":
        return None
    return unquote(parts.username) if parts.username else "guest"


def _reply_text(error: BaseException) -> str:
    return str(error.args[0]) if error.args else type(error).__name__


class _Session:
    """One connection and what hangs on it: a confirming channel for commands, and a channel that
    consumes the event queue. The first of them to close ends the session."""

    def __init__(self, connection: AbstractConnection, url: str, on_change: Callable[[], None]) -> None:
        self.connection = connection
        #: Told when the publishing channel is back after a renewal.
        self._on_change = on_change
        self.node = node_label(url)
        self.user_id = connection_user(url)
        self.bound: set[str] = set()
        self.lost = asyncio.Event()
        #: Why it ended; None while it lasts, or when the link closed it.
        self.cause: BaseException | None = None
        self.publishing: AbstractChannel | None = None
        self.queue: AbstractQueue | None = None
        self.events: AbstractExchange | None = None
        self._renewing = asyncio.Lock()
        connection.close_callbacks.add(self._closed)

    def _closed(self, _sender: object, error: BaseException | None = None) -> None:
        self.fail(error)

    def fail(self, error: BaseException | None) -> None:
        if not self.lost.is_set():
            self.cause = error
            self.lost.set()

    @property
    def connection_lost(self) -> bool:
        """Whether the connection itself went (rather than one of its channels)."""
        return self.connection.is_closed or not self.connection.connected.is_set()

    async def open(
        self,
        *,
        command_exchange: str,
        event_exchange: str,
        deliver: Callable[[AbstractIncomingMessage], Any],
    ) -> None:
        consuming = await self.connection.channel(publisher_confirms=False)
        consuming.close_callbacks.add(self._closed)
        self.events = await _look_up(consuming, event_exchange, "event")
        self.queue = await consuming.declare_queue(exclusive=True, auto_delete=True)
        await self.queue.consume(deliver, no_ack=True)
        await self._open_publishing()
        assert self.publishing is not None
        await _look_up(self.publishing, command_exchange, "command")

    async def _open_publishing(self) -> None:
        publishing = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
        publishing.close_callbacks.add(self._closed)
        self.publishing = publishing

    async def renew_publishing(self, refusing: AbstractChannel) -> None:
        """A new channel for commands in place of ``refusing``, which the broker nacks (unless another
        publish renewed it already). RabbitMQ 3.10 went on nacking every publish on a channel that
        published while a quorum queue's node was being lost, long after the queue had a new leader,
        while a new channel on the same connection had its publishes confirmed at once."""
        async with self._renewing:
            if self.publishing is not refusing or self.lost.is_set():
                return
            # None meanwhile: the other publishes on it fail with it and wait for the new one.
            self.publishing = None
            refusing.close_callbacks.discard(self._closed)
            with contextlib.suppress(*CONNECTION_ERRORS):
                await refusing.close()
            try:
                await self._open_publishing()
            except _LOST as error:
                self.fail(error)
            self._on_change()

    async def close(self) -> None:
        self.fail(None)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.connection.close(), 5)


async def _look_up(channel: AbstractChannel, name: str, which: str) -> AbstractExchange:
    try:
        return await channel.get_exchange(name, ensure=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        raise _missing(name, which) from None


def _missing(name: str, which: str) -> ExchangeNotFound:
    setting = f"SIGNALING_{which.upper()}_EXCHANGE"
    return ExchangeNotFound(
        f"the {which} exchange {name!r} does not exist: start the service first, or give the client "
        f"the service's {setting}"
    )


class ControllerLink:
    """Commands out (confirmed, mandatory) and events in, over several broker addresses.

    ``on_event`` is called for every event, in the order the broker delivers them, with nothing
    awaited in between: it must not block. Routing keys are bound while someone holds them
    (``binding``); ``publish`` and ``binding`` wait for a connection up to their deadline
    (``loop.time()`` based) and raise ``TimeoutError`` at it.
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        command_exchange: str,
        event_exchange: str,
        on_event: Callable[[IncomingEvent], None],
        connection_name: str,
        connect_timeout: float = 5.0,
        reconnect_interval: float = 1.0,
    ) -> None:
        if not urls:
            raise ValueError("no broker address")
        self._urls = tuple(urls)
        self._command_exchange = command_exchange
        self._event_exchange = event_exchange
        self._on_event = on_event
        self._client_properties = {"connection_name": connection_name}
        self._connect_timeout = connect_timeout
        self._reconnect_interval = reconnect_interval
        #: Where the next connection attempt starts.
        self._next = 0
        self._session: _Session | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._closed = False
        #: Routing keys held, with how many holders each.
        self._wanted: Counter[str] = Counter()
        self._refused: dict[str, NotPermitted] = {}
        #: Set when something the supervisor acts on changed: the keys wanted, or the session ended.
        self._wake = asyncio.Event()
        #: Replaced (after being set) whenever the session or its bindings change, for waiters.
        self._changed = asyncio.Event()

    # -- state ----------------------------------------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        return self._session is not None and not self._session.lost.is_set()

    @property
    def node(self) -> str | None:
        """``host:port/vhost`` of the node connected to (never the user name or password)."""
        return self._session.node if self.is_connected and self._session is not None else None

    @property
    def bindings(self) -> frozenset[str]:
        """The routing keys the event queue is bound with on the broker now."""
        return (
            frozenset(self._session.bound) if self.is_connected and self._session is not None else frozenset()
        )

    @property
    def held(self) -> frozenset[str]:
        """The routing keys someone holds (bound now, or as soon as the link is connected)."""
        return frozenset(self._wanted)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _until(self, ready: Callable[[], bool], deadline: float, what: str) -> None:
        while True:
            if self._closed:
                raise BrokerUnavailable("the client is closed")
            if ready():
                return
            changed = self._changed
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise TimeoutError(f"{what}: not connected to RabbitMQ in time")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)

    # -- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to the first address that answers and start keeping the link up. Raises
        ``BrokerUnavailable`` when none answers, ``ExchangeNotFound`` without the service's exchanges."""
        if self._supervisor is not None or self._closed:
            raise RuntimeError("a controller link starts once")
        try:
            session = await self._open_session()
        except (*CONNECTION_EXCEPTIONS, TimeoutError) as error:
            if isinstance(error, LinkError):
                raise
            refusal = explain_refusal(error)
            nodes = ", ".join(node_label(url) for url in self._urls)
            raise BrokerUnavailable(
                f"no RabbitMQ node took the connection ({nodes}): {refusal or type(error).__name__}"
            ) from error
        self._session = session
        self._supervisor = asyncio.create_task(self._supervise(session), name="controller-link")

    async def close(self) -> None:
        self._closed = True
        self._notify()
        # The connection first: an operation of the supervisor's in flight then fails with it instead
        # of being cancelled (which aiormq reports as an error).
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor

    async def _open_session(self) -> _Session:
        urls = self._urls[self._next :] + self._urls[: self._next]
        connection, url = await connect_first(
            urls, connect_timeout=self._connect_timeout, client_properties=self._client_properties
        )
        self._next = self._urls.index(url)
        session = _Session(connection, url, self._notify)
        try:
            await session.open(
                command_exchange=self._command_exchange,
                event_exchange=self._event_exchange,
                deliver=self._deliver,
            )
            # Bound before anyone publishes on it: a command sent again after a reconnect is answered
            # at once, and an answer finds no queue until its room's key is bound.
            await self._reconcile(session)
        except BaseException:
            await session.close()
            raise
        log.info("controller connected to RabbitMQ node %s", session.node)
        return session

    async def _supervise(self, session: _Session) -> None:
        while True:
            self._notify()
            try:
                await self._keep(session)
            except Exception as error:  # a bug here must not leave the link down for good
                log.exception("controller link: unexpected error; reconnecting")
                session.fail(error)
            # A channel the broker closed (a refused binding) leaves the connection, and the same node
            # is fine; a lost connection moves on to the next node.
            moving_on = session.connection_lost
            await session.close()
            if self._closed:
                return
            self._session = None
            self._notify()
            if moving_on:
                self._next = (self._next + 1) % len(self._urls)
            log.warning(
                "controller's connection to RabbitMQ node %s ended (%s); reconnecting",
                session.node,
                type(session.cause).__name__ if session.cause is not None else "closed",
            )
            session = await self._reopen()
            if self._closed:
                await session.close()
                return
            self._session = session

    async def _reopen(self) -> _Session:
        """A new session, trying every address in turn and pausing after each round that failed."""
        while True:
            try:
                return await self._open_session()
            except (*CONNECTION_EXCEPTIONS, TimeoutError, LinkError) as error:
                log.warning("no RabbitMQ node took the controller (%s); retrying", type(error).__name__)
            await asyncio.sleep(self._reconnect_interval)

    async def _keep(self, session: _Session) -> None:
        """Keep the session's bindings those wanted until the session ends."""
        while not session.lost.is_set():
            self._wake.clear()
            await self._reconcile(session)
            if session.lost.is_set():
                return
            lost = asyncio.ensure_future(session.lost.wait())
            woken = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait({lost, woken}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                lost.cancel()
                woken.cancel()

    def _covered(self, key: str) -> bool:
        """Whether ``key`` needs no binding of its own: ``room.#`` is held and sees it already."""
        return key != EVERY_EVENT and EVERY_EVENT in self._wanted and seen_by_every_event(key)

    async def _reconcile(self, session: _Session) -> None:
        queue, events = session.queue, session.events
        assert queue is not None
        assert events is not None
        wanted = {key for key in self._wanted if not self._covered(key)}
        try:
            for key in sorted(wanted - session.bound):
                try:
                    await queue.bind(events, routing_key=key)
                except _REFUSALS as error:
                    self._refused[key] = NotPermitted(_reply_text(error))
                    session.fail(error)
                    return
                session.bound.add(key)
                self._notify()
            for key in sorted(session.bound - wanted):
                await queue.unbind(events, routing_key=key)
                session.bound.discard(key)
        except _LOST as error:
            session.fail(error)
        finally:
            self._notify()

    # -- events ---------------------------------------------------------------------------------------

    async def _deliver(self, message: AbstractIncomingMessage) -> None:
        # Nothing is awaited here: aiormq starts one task per delivery, in order, so deliveries reach
        # ``on_event`` in the order the broker sent them.
        self._on_event(
            IncomingEvent(
                routing_key=message.routing_key or "",
                correlation_id=message.correlation_id,
                message_id=message.message_id,
                body=message.body,
            )
        )

    def _is_bound(self, key: str) -> bool:
        session = self._session
        if session is None or session.lost.is_set():
            return False
        return key in session.bound or (self._covered(key) and EVERY_EVENT in session.bound)

    @contextlib.asynccontextmanager
    async def binding(self, key: str, *, deadline: float) -> AsyncIterator[None]:
        """Hold ``key``: once this is entered the event queue is bound with it, and it stays bound (on
        every connection to come) until the last holder leaves. Raises ``NotPermitted`` when the broker
        refuses the binding (topic permissions), ``TimeoutError`` at the deadline."""
        self._wanted[key] += 1
        self._wake.set()
        try:

            def bound() -> bool:
                refused = self._refused.get(key)
                if refused is not None:
                    raise refused
                return self._is_bound(key)

            await self._until(bound, deadline, f"binding {key}")
            yield
        finally:
            # Synchronous, so that a cancelled holder always lets go; the supervisor unbinds.
            self._wanted[key] -= 1
            if self._wanted[key] <= 0:
                del self._wanted[key]
                self._refused.pop(key, None)
                self._wake.set()

    # -- commands -------------------------------------------------------------------------------------

    async def publish(self, routing_key: str, body: bytes, *, message_id: str, deadline: float) -> None:
        """Publish one command and wait for the broker's confirm, with the same ``message_id`` again
        until the deadline when the connection took the publish down with it or the broker refused it
        for now (a negative confirm: a quorum queue electing a new leader after its node was lost, or a
        queue over its length limit). Raises ``CommandUnroutable``, ``NotPermitted``,
        ``CommandRejected`` (still refused at the deadline), or ``TimeoutError`` at the deadline (the
        broker may then have the command or not: publishing it again with the same ``message_id`` is
        safe)."""
        pause = REJECTED_RETRY_SECONDS
        while True:
            await self._until(self._connection_ready, deadline, "publish")
            session = self._session
            assert session is not None
            channel = session.publishing
            assert channel is not None
            properties = spec.Basic.Properties(
                content_type="application/json",
                delivery_mode=PERSISTENT,
                message_id=message_id,
                # RabbitMQ refuses a user_id that is not the connection's own user.
                user_id=session.user_id,
                # The caller's trace (W3C traceparent, tracestate, baggage), as an instrumented
                # publisher passes it on: the service's spans and the events continue it.
                headers=cast(dict[str, Any] | None, current_headers()),
            )
            try:
                async with asyncio.timeout_at(deadline):
                    await publish_confirmed(
                        channel,
                        body,
                        exchange=self._command_exchange,
                        routing_key=routing_key,
                        properties=properties,
                        mandatory=True,
                    )
            except aiormq.exceptions.PublishError:  # a return: before DeliveryError, its base
                raise CommandUnroutable(routing_key) from None
            except aiormq.exceptions.DeliveryError:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= pause:
                    raise CommandRejected(
                        f"RabbitMQ refused the command for {routing_key!r} until the deadline (a queue "
                        "without a leader, or over its length limit)"
                    ) from None
                log.info("RabbitMQ refused a command for now; publishing it again on a new channel")
                await session.renew_publishing(channel)
                await asyncio.sleep(pause)
                pause = min(2 * pause, 1.0)
                continue
            except _REFUSALS as error:
                session.fail(error)
                raise NotPermitted(_reply_text(error)) from None
            except aiormq.exceptions.ChannelNotFoundEntity:
                session.fail(None)
                raise _missing(self._command_exchange, "command") from None
            except CONNECTION_ERRORS as error:
                if session.publishing is channel:  # not a channel being renewed under this publish
                    session.fail(error)
                    log.info("a command's publish was lost with the connection; publishing it again")
                continue
            return

    def _connection_ready(self) -> bool:
        session = self._session
        return session is not None and not session.lost.is_set() and session.publishing is not None
