"""``SignalingClient``: the service's contract as typed async calls, for a controller written in Python.

A call publishes one command (persistent, ``mandatory``, confirmed by the broker) and waits for the
events that answer it, correlated by ``message_id`` and decoded by the contract's codec into the types of
``livekit_signaling.schemas.events``. Events published while the client is between two connections are
not seen by it (see ``CommandTimeout`` for what a retry does then).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import uuid
from collections.abc import Callable, Sequence
from typing import TypedDict, TypeVar, Unpack

import msgspec

from livekit_signaling.client.answers import Answers, AnswerWatch, ReceivedEvent, Sent
from livekit_signaling.client.errors import CommandError, CommandTimeout
from livekit_signaling.client.streams import STREAM_BUFFER, EventStream
from livekit_signaling.schemas import codec
from livekit_signaling.schemas.commands import (
    Close,
    Command,
    CreateNewAccessToken,
    DisableMicrophoneRestrictions,
    EnableMicrophoneRestrictions,
    ForceMute,
    GrantScreenSharePermission,
    Join,
    Kind,
    Leave,
    RequestPopoutStreamAccessToken,
    RevokeScreenSharePermission,
    Role,
)
from livekit_signaling.schemas.events import (
    CredentialsEvent,
    JoinSuccess,
    MicrophoneRestrictionsDisabled,
    MicrophoneRestrictionsEnabled,
    PopoutStreamAccessToken,
    ScreenSharePermissionsUpdated,
)
from livekit_signaling.schemas.routing import (
    command_routing_key,
    room_events_binding,
)
from livekit_signaling.transport.brokers import split_broker_urls
from livekit_signaling.transport.controller import BrokerUnavailable, ControllerLink, IncomingEvent

log = logging.getLogger(__name__)

E = TypeVar("E")

#: How long a call waits for its answer by default: longer than the service's own bound on a command
#: (``COMMAND_DEADLINE_SECONDS``, 8 s by default), after which it answers ``livekit_unavailable``.
DEFAULT_TIMEOUT_SECONDS = 10.0
#: Event ids remembered to drop the copies of a command the service ran twice (they keep their ids).
RECENT_EVENT_IDS = 10_000


class UndecodableEvent(msgspec.Struct, frozen=True):
    """A message on the event exchange that is not one of the contract's events (``error`` says why)."""

    routing_key: str
    correlation_id: str | None
    body: bytes
    error: str


class CallOptions(TypedDict, total=False):
    """What every command method takes besides its own arguments."""

    #: The sender's role as the controller knows it: "moderator" for moderator commands (and
    #: ``close_room``) unless given, "user" for the others.
    role: Role
    kind: Kind
    #: The AMQP message_id; a new uuid unless given (a retry gives the earlier try's).
    message_id: str | None
    #: Seconds for the answer (the client's ``timeout`` unless given).
    timeout: float | None


def _with_role(options: CallOptions, role: Role) -> CallOptions:
    """``options`` with ``role`` unless they name one."""
    return {"role": role, **options}


class _Call:
    """A call waiting for the events of its command."""

    __slots__ = ("answered", "arrived", "events", "watch")

    def __init__(self, watch: AnswerWatch) -> None:
        self.watch = watch
        self.events: list[ReceivedEvent] = []
        self.answered = asyncio.Event()
        #: Set by each event; cleared by who waits for the next.
        self.arrived = asyncio.Event()

    def add(self, received: ReceivedEvent) -> None:
        self.events.append(received)
        self.arrived.set()
        if self.watch.add(received.event):
            self.answered.set()

    async def settle(self, quiet: float) -> None:
        """Until no event arrived for ``quiet`` seconds."""
        while True:
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), quiet)
            except TimeoutError:
                return


class SignalingClient:
    """A controller's client of the service: one method per command, and the events as typed streams.

    ``amqp_url`` is one URL or several (the nodes of one cluster, as a list or comma-separated, as the
    service's ``AMQP_URL``); the client connects to the first that answers and, when that connection is
    lost, to the next, again and again until closed. Its user needs no more than a controller's
    permissions (``deploy/rabbitmq/definitions.json``): the service's exchanges must exist (the service
    declares them), and the client's only queue is an exclusive, server-named one. ``timeout`` is each
    call's default.

    Every call takes ``message_id`` (a new uuid if not given): sending a command again with the id of an
    earlier try is safe within the service's ``DEDUP_WINDOW_SECONDS`` (600 s by default), which runs a
    command at most once per id; see ``CommandTimeout``.
    """

    def __init__(
        self,
        amqp_url: str | Sequence[str],
        *,
        command_exchange: str = "livekit.commands",
        event_exchange: str = "livekit.events",
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        connection_name: str = "livekit-signaling-client",
        connect_timeout: float = 5.0,
        reconnect_interval: float = 1.0,
        on_undecodable: Callable[[UndecodableEvent], None] | None = None,
    ) -> None:
        urls = split_broker_urls(amqp_url) if isinstance(amqp_url, str) else tuple(amqp_url)
        self.timeout = timeout
        self.link = ControllerLink(
            urls,
            command_exchange=command_exchange,
            event_exchange=event_exchange,
            on_event=self._on_event,
            connection_name=connection_name,
            connect_timeout=connect_timeout,
            reconnect_interval=reconnect_interval,
        )
        self._on_undecodable = on_undecodable or _log_undecodable
        self._calls: dict[str, list[_Call]] = {}
        self._streams: set[EventStream] = set()
        self._recent: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._closed = False

    # -- lifecycle and state --------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect; raises ``BrokerUnavailable`` when no node answers and ``ExchangeNotFound`` without
        the service's exchanges."""
        await self.link.start()

    async def close(self) -> None:
        """Disconnect; streams end after the events they hold, calls still waiting raise
        ``BrokerUnavailable``."""
        self._closed = True
        for stream in list(self._streams):
            stream.end()
        for calls in self._calls.values():
            for call in calls:
                call.answered.set()
        await self.link.close()

    async def __aenter__(self) -> SignalingClient:
        await self.open()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    @property
    def is_connected(self) -> bool:
        return self.link.is_connected

    @property
    def node(self) -> str | None:
        """``host:port/vhost`` of the RabbitMQ node connected to."""
        return self.link.node

    @property
    def waiting(self) -> int:
        """How many calls are waiting for answers."""
        return sum(len(calls) for calls in self._calls.values())

    # -- commands, generic ----------------------------------------------------------------------------

    async def publish(
        self,
        room: str,
        participant: str,
        command: Command,
        *,
        role: Role = "user",
        kind: Kind = "user",
        message_id: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - for the confirm, a broker I/O bound
    ) -> Sent:
        """Publish ``command`` from ``participant`` and return once the broker confirmed it, without
        waiting for answers. ``ValueError`` (``codec.MalformedEnvelope``/``InvalidPayload``) for what the
        service would refuse; ``CommandUnroutable`` when no queue takes it; ``CommandTimeout``."""
        body = codec.encode_command(room, participant, command, role=role, kind=kind)
        return await self.publish_raw(room, body, message_id=message_id, timeout=timeout)

    async def publish_raw(
        self,
        room: str,
        body: bytes,
        *,
        message_id: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - for the confirm, a broker I/O bound
    ) -> Sent:
        """Publish ``body`` as it is to ``room``'s routing key: for tools that send what the service
        must refuse (tests, the dev console's form). Everything else uses ``publish``."""
        message_id = message_id or uuid.uuid4().hex
        try:
            await self.link.publish(
                command_routing_key(room), body, message_id=message_id, deadline=self._deadline(timeout)
            )
        except TimeoutError as error:
            raise CommandTimeout(message_id, confirmed=False) from error
        return Sent(message_id=message_id, room=room)

    async def request(
        self,
        room: str,
        participant: str,
        command: Command,
        *,
        role: Role = "user",
        kind: Kind = "user",
        message_id: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the wait for answers
        linger: float = 0.0,
    ) -> Answers:
        """Publish ``command`` and collect the events that answer it until the command's rule is met
        (``livekit_signaling.client.answers``) or ``timeout`` ends the wait: then ``complete`` is False
        (for ``leave`` and ``close_room``, with no error, always). ``linger``: once the rule is met,
        collect on until no event came for that long (a broadcast's copies to the other participants,
        which the service publishes together with the sender's). Raises as ``publish`` does."""
        body = codec.encode_command(room, participant, command, role=role, kind=kind)
        message_id = message_id or uuid.uuid4().hex
        deadline = self._deadline(timeout)
        call = _Call(AnswerWatch(command, participant))
        # Waiting before publishing: an answer can arrive before the confirm does.
        self._calls.setdefault(message_id, []).append(call)
        try:
            try:
                async with self.link.binding(room_events_binding(room), deadline=deadline):
                    await self.link.publish(
                        command_routing_key(room), body, message_id=message_id, deadline=deadline
                    )
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout_at(deadline):
                            await call.answered.wait()
                            if linger > 0:
                                await call.settle(linger)
                if self._closed and not call.watch.complete:
                    raise BrokerUnavailable("the client was closed while the call waited for its answer")
            except TimeoutError as error:  # no connection, binding or confirm in time
                raise CommandTimeout(message_id, confirmed=False) from error
        finally:
            self._forget(message_id, call)
        return Answers(
            message_id=message_id, sender=participant, events=tuple(call.events), complete=call.watch.complete
        )

    async def _ask(
        self,
        expected: type[E],
        room: str,
        participant: str,
        command: Command,
        options: CallOptions,
        *,
        role: Role = "user",
    ) -> E:
        """``request`` (``role`` unless ``options`` name one), then the sender's answer of type
        ``expected``; ``CommandError`` for an error, ``CommandTimeout`` without a complete answer."""
        answers = await self.request(room, participant, command, **_with_role(options, role))
        if not answers.complete:
            raise CommandTimeout(answers.message_id, confirmed=True, answers=answers)
        error = answers.error
        if error is not None:
            raise CommandError(error, answers)
        return next(payload for payload in answers.to(participant) if isinstance(payload, expected))

    def _deadline(self, timeout: float | None) -> float:
        return asyncio.get_running_loop().time() + (self.timeout if timeout is None else timeout)

    def _forget(self, message_id: str, call: _Call) -> None:
        calls = self._calls.get(message_id, [])
        if call in calls:
            calls.remove(call)
        if not calls:
            self._calls.pop(message_id, None)

    # -- commands, one method each --------------------------------------------------------------------
    # ``options``: ``role`` (the sender's; "moderator" for moderator commands, else "user" by default),
    # ``kind`` ("user"), ``message_id`` (a new uuid) and ``timeout`` (the client's), as ``CallOptions``.

    async def join(self, room: str, participant: str, **options: Unpack[CallOptions]) -> JoinSuccess:
        """``participant`` joined ``room`` (``role`` and ``kind`` as the controller knows them): its
        LiveKit credentials and the room's microphone restrictions."""
        return await self._ask(JoinSuccess, room, participant, Join(), options)

    async def create_new_access_token(
        self, room: str, participant: str, **options: Unpack[CallOptions]
    ) -> CredentialsEvent:
        """Fresh LiveKit credentials for ``participant``."""
        return await self._ask(CredentialsEvent, room, participant, CreateNewAccessToken(), options)

    async def request_popout_stream_access_token(
        self, room: str, participant: str, **options: Unpack[CallOptions]
    ) -> PopoutStreamAccessToken:
        """A hidden, subscribe-only token for a popout stream of ``participant``."""
        command = RequestPopoutStreamAccessToken()
        return await self._ask(PopoutStreamAccessToken, room, participant, command, options)

    async def grant_screen_share_permission(
        self, room: str, moderator: str, participants: Sequence[str], **options: Unpack[CallOptions]
    ) -> ScreenSharePermissionsUpdated:
        """Let ``participants`` share their screen. ``CommandError`` ``unknown_participants`` names those
        not in the room (its ``answers`` hold the update for the others)."""
        command = GrantScreenSharePermission(participants=list(participants))
        return await self._ask(
            ScreenSharePermissionsUpdated, room, moderator, command, options, role="moderator"
        )

    async def revoke_screen_share_permission(
        self, room: str, moderator: str, participants: Sequence[str], **options: Unpack[CallOptions]
    ) -> ScreenSharePermissionsUpdated:
        """Stop ``participants`` sharing their screen; errors as for the grant."""
        command = RevokeScreenSharePermission(participants=list(participants))
        return await self._ask(
            ScreenSharePermissionsUpdated, room, moderator, command, options, role="moderator"
        )

    async def enable_microphone_restrictions(
        self,
        room: str,
        moderator: str,
        unrestricted_participants: Sequence[str] = (),
        **options: Unpack[CallOptions],
    ) -> MicrophoneRestrictionsEnabled:
        """Only moderators and ``unrestricted_participants`` may use a microphone. The service tells
        everyone it knows in the room; this returns the moderator's copy, so the moderator must have
        joined (else ``CommandTimeout``: use ``publish`` to send it without waiting)."""
        command = EnableMicrophoneRestrictions(unrestricted_participants=list(unrestricted_participants))
        return await self._ask(
            MicrophoneRestrictionsEnabled, room, moderator, command, options, role="moderator"
        )

    async def disable_microphone_restrictions(
        self, room: str, moderator: str, **options: Unpack[CallOptions]
    ) -> MicrophoneRestrictionsDisabled:
        """Everybody may use a microphone again; answered as ``enable_microphone_restrictions``."""
        command = DisableMicrophoneRestrictions()
        return await self._ask(
            MicrophoneRestrictionsDisabled, room, moderator, command, options, role="moderator"
        )

    async def force_mute(
        self, room: str, moderator: str, participants: Sequence[str], **options: Unpack[CallOptions]
    ) -> Sent:
        """Mute ``participants``' microphones. The service answers the muted participants
        (``force_muted``) and, on a failure or for unknown targets, the moderator (``error``); on success
        it may answer nobody (no microphone was open), so this returns the broker's confirm only: the
        answers reach ``events`` streams, or wait for them with ``request``."""
        command = ForceMute(participants=list(participants))
        return await self.publish(room, moderator, command, **_with_role(options, "moderator"))

    async def leave(self, room: str, participant: str, **options: Unpack[CallOptions]) -> Sent:
        """``participant`` left: its LiveKit identities are removed. Answered with nothing but a possible
        ``error``, so this returns the broker's confirm only."""
        return await self.publish(room, participant, Leave(), **options)

    async def close_room(self, room: str, participant: str, **options: Unpack[CallOptions]) -> Sent:
        """The room is over: the LiveKit room and all state of the room go. Returns the broker's
        confirm only, as ``leave``."""
        return await self.publish(room, participant, Close(), **_with_role(options, "moderator"))

    # -- events ---------------------------------------------------------------------------------------

    def events(
        self, room: str | None = None, participant: str | None = None, *, buffer: int = STREAM_BUFFER
    ) -> EventStream:
        """Every event (no ``room``), a room's, or one participant's, as an ``EventStream``."""
        return EventStream(
            self.link, self._streams, room=room, participant=participant, buffer=buffer, timeout=self.timeout
        )

    def _on_event(self, incoming: IncomingEvent) -> None:
        if incoming.message_id is not None:
            if incoming.message_id in self._recent:
                return
            self._recent[incoming.message_id] = None
            if len(self._recent) > RECENT_EVENT_IDS:
                self._recent.popitem(last=False)
        try:
            event = codec.decode_event(incoming.body)
        except codec.MalformedEvent as error:
            self._on_undecodable(
                UndecodableEvent(incoming.routing_key, incoming.correlation_id, incoming.body, str(error))
            )
            return
        received = ReceivedEvent(
            routing_key=incoming.routing_key,
            correlation_id=incoming.correlation_id,
            message_id=incoming.message_id,
            event=event,
        )
        if received.correlation_id is not None:
            for call in self._calls.get(received.correlation_id, ()):
                call.add(received)
        for stream in self._streams:
            stream.offer(received)


def _log_undecodable(event: UndecodableEvent) -> None:
    # The error names the field and what was wrong, never the body (it may hold a token).
    log.warning("a message on the event exchange (%s) is not an event: %s", event.routing_key, event.error)
