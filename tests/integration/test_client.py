"""The public Python client (``livekit_signaling.client``) against the real service and broker: every
command, errors, a timeout and what a cancelled or timed-out call leaves behind, a retry with the same
``message_id``, an unroutable command, missing exchanges, and a connection lost under it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import aio_pika
import aiormq
import pytest
from livekit.api import TokenVerifier

from livekit_signaling.client import (
    BrokerUnavailable,
    CommandError,
    CommandTimeout,
    CommandUnroutable,
    EventStreamOverflow,
    ExchangeNotFound,
    ReceivedEvent,
    SignalingClient,
)
from livekit_signaling.schemas import codec
from livekit_signaling.schemas.commands import ForceMute
from livekit_signaling.schemas.events import (
    ErrorEvent,
    ForceMuted,
    JoinSuccess,
    MicrophoneRestrictionsDisabled,
    MicrophoneRestrictionsEnabled,
    RestrictionsDisabledState,
    RestrictionsEnabledState,
    ScreenSharePermissionsUpdated,
)
from testkit.amqp import SignalingClient as RawObserver
from testkit.emulator import Emulator, microphone_tracks
from testkit.processes import AMQP_URL, API_KEY, API_SECRET, Names, ServiceProcess
from testkit.proxy import TcpProxy

verifier = TokenVerifier(API_KEY, API_SECRET)


def pid() -> str:
    return str(uuid.uuid4())


def connected_to(names: Names, url: str = AMQP_URL, **options: float) -> SignalingClient:
    return SignalingClient(
        url,
        command_exchange=names.command_exchange,
        event_exchange=names.event_exchange,
        connection_name="test-signaling-client",
        **options,
    )


@pytest.fixture
async def controller(service: ServiceProcess, names: Names) -> AsyncIterator[SignalingClient]:
    async with connected_to(names, timeout=8.0) as client:
        yield client


async def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not within the time")


async def drain(events: AsyncIterator[ReceivedEvent], quiet: float = 0.5) -> list[ReceivedEvent]:
    """What a stream holds, and what arrives until it has been quiet for ``quiet`` seconds."""
    seen = []
    while True:
        try:
            seen.append(await asyncio.wait_for(anext(events), quiet))
        except TimeoutError:
            return seen


async def test_every_command_is_answered_with_its_typed_event(
    controller: SignalingClient, emulator: Emulator, room: str
) -> None:
    moderator, speaker = pid(), pid()
    async with controller.events(room) as events:
        joined = await controller.join(room, moderator, role="moderator")
        assert joined.credentials.room == room
        assert joined.credentials.public_url == "wss://livekit.example.test"
        assert joined.microphone_restriction_state == RestrictionsDisabledState()
        assert verifier.verify(joined.credentials.token).identity == moderator

        spoken = await controller.join(room, speaker)
        await emulator.connect(spoken.credentials.token)
        track = await emulator.publish(room, speaker, "microphone")

        fresh = await controller.create_new_access_token(room, speaker)
        assert (fresh.room, verifier.verify(fresh.token).identity) == (room, speaker)
        popout = await controller.request_popout_stream_access_token(room, speaker)
        assert verifier.verify(popout.token).identity == f"{speaker}.popout1"

        granted = await controller.grant_screen_share_permission(room, moderator, [speaker])
        assert granted == ScreenSharePermissionsUpdated(grant=True, participants=[speaker])
        revoked = await controller.revoke_screen_share_permission(room, moderator, [speaker])
        assert revoked == ScreenSharePermissionsUpdated(grant=False, participants=[speaker])

        enabled = await controller.enable_microphone_restrictions(room, moderator, [speaker])
        assert enabled == MicrophoneRestrictionsEnabled(unrestricted_participants=[speaker])
        late = await controller.join(room, pid())
        assert late.microphone_restriction_state == RestrictionsEnabledState(
            unrestricted_participants=[speaker]
        )
        disabled = await controller.disable_microphone_restrictions(room, moderator)
        assert disabled == MicrophoneRestrictionsDisabled()

        # force_mute answers the muted participant, not the moderator: the call returns the confirm.
        sent = await controller.force_mute(room, moderator, [speaker])
        seen = await drain(events)
        muted = [e for e in seen if e.correlation_id == sent.message_id]
        assert [(e.participant, e.payload) for e in muted] == [(speaker, ForceMuted(moderator=moderator))]
        assert all(t.muted for t in microphone_tracks(await emulator.participant(room, speaker)))
        assert track is not None

        left = await controller.leave(room, speaker)
        closed = await controller.close_room(room, moderator)
        assert [
            e for e in await drain(events) if e.correlation_id in {left.message_id, closed.message_id}
        ] == []
    assert speaker not in await emulator.participants(room)


async def test_a_room_stream_and_a_participant_stream_see_their_events_typed(
    controller: SignalingClient, room: str
) -> None:
    alice, bob = pid(), pid()
    async with controller.events(room) as everyone, controller.events(room, alice) as alices:
        await controller.join(room, alice, role="moderator")
        await controller.join(room, bob)
        await controller.enable_microphone_restrictions(room, alice, [])
        seen_by_room = await drain(everyone)
        seen_by_alice = await drain(alices, quiet=0.1)
    assert [(e.participant, type(e.payload)) for e in seen_by_room] == [
        (alice, JoinSuccess),
        (bob, JoinSuccess),
        (alice, MicrophoneRestrictionsEnabled),
        (bob, MicrophoneRestrictionsEnabled),
    ]
    assert [e.event for e in seen_by_alice] == [e.event for e in seen_by_room if e.participant == alice]
    assert all(e.routing_key == f"room.{room}.participant.{e.participant}" for e in seen_by_room)
    # Left: the client holds no binding any more.
    assert controller.link.held == frozenset()


async def test_the_services_error_is_raised_with_the_answers_that_came(
    controller: SignalingClient, room: str
) -> None:
    moderator, user, stranger = pid(), pid(), pid()
    await controller.join(room, moderator, role="moderator")
    await controller.join(room, user)
    # A user's moderator command: force_mute answers an error only, so it is waited for with request.
    answers = await controller.request(room, user, ForceMute(participants=[moderator]))
    assert answers.complete
    assert answers.error == ErrorEvent(error="insufficient_permissions")
    with pytest.raises(CommandError) as refused:
        await controller.enable_microphone_restrictions(room, user, [], role="user")
    assert refused.value.code == "insufficient_permissions"
    assert [e.participant for e in refused.value.answers.events] == [user]

    with pytest.raises(CommandError) as unknown:
        await controller.grant_screen_share_permission(room, moderator, [user, stranger])
    assert unknown.value.code == "unknown_participants"
    assert unknown.value.error.participants == [stranger]
    # The update for the participant that was known came first, with the same correlation.
    assert unknown.value.answers.to(moderator)[0] == ScreenSharePermissionsUpdated(
        grant=True, participants=[user]
    )


async def test_a_retry_with_the_same_message_id_is_run_and_answered_once(
    controller: SignalingClient, client: RawObserver, room: str
) -> None:
    participant, message_id = pid(), uuid.uuid4().hex
    # A retry sent while the first try still waits: both calls get the one answer.
    first, retry = await asyncio.gather(
        controller.join(room, participant, message_id=message_id),
        controller.join(room, participant, message_id=message_id),
    )
    assert first == retry
    # A retry after the answer: the service recognises the id and runs nothing, answers nothing.
    with pytest.raises(CommandTimeout) as late:
        await controller.join(room, participant, message_id=message_id, timeout=1.0)
    assert late.value.confirmed
    assert late.value.message_id == message_id
    assert controller.waiting == 0
    # Counted by an observer of its own (the client drops copies of an event it has seen).
    await client.quiet(0.3)
    answers = [e for e in client.events_for(room) if e.correlation_id == message_id]
    assert [e.message for e in answers] == ["join_success"]


@pytest.fixture
async def unserved(names: Names) -> AsyncIterator[Names]:
    """Exchanges of their own: commands go to a queue nobody consumes (``names.queue``)."""
    own = Names()
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        commands = await channel.declare_exchange(own.command_exchange, aio_pika.ExchangeType.TOPIC)
        await channel.declare_exchange(own.event_exchange, aio_pika.ExchangeType.TOPIC)
        queue = await channel.declare_queue(own.queue)
        await queue.bind(commands, "room.*")
        yield own
        await queue.delete(if_unused=False, if_empty=False)
        await channel.exchange_delete(own.command_exchange)
        await channel.exchange_delete(own.event_exchange)


async def nothing_bound_for(names: Names, room: str) -> bool:
    """Whether an event for ``room`` has no queue to go to (the broker returns it)."""
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel(on_return_raises=True)
        exchange = await channel.get_exchange(names.event_exchange)
        try:
            await exchange.publish(aio_pika.Message(b"{}"), f"room.{room}.participant.p", mandatory=True)
        except aiormq.exceptions.PublishError:
            return True
        return False


async def test_no_answer_in_time_is_a_timeout_and_a_cancelled_call_leaves_nothing_behind(
    unserved: Names, room: str
) -> None:
    async def let_go() -> None:
        """Until the client holds nothing and the broker has no binding left for the room (the link
        unbinds in the background)."""
        assert (client.waiting, client.link.held) == (0, frozenset())
        for _ in range(100):
            if not client.link.bindings and await nothing_bound_for(unserved, room):
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"still bound: {client.link.bindings}")

    async with connected_to(unserved) as client:
        with pytest.raises(CommandTimeout) as timed_out:
            await client.join(room, pid(), timeout=0.5)
        assert timed_out.value.confirmed  # the broker has it; nobody answered
        assert timed_out.value.answers is not None
        assert not timed_out.value.answers.complete
        await let_go()

        waiting = asyncio.create_task(client.join(room, pid()))
        await eventually(lambda: bool(client.link.bindings))
        assert client.waiting == 1
        assert not await nothing_bound_for(unserved, room)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await let_go()


async def test_an_unroutable_command_is_an_error(unserved: Names, room: str) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(unserved.queue)  # the command exchange is left without a binding
    async with connected_to(unserved) as client:
        with pytest.raises(CommandUnroutable, match=f"room.{room}"):
            await client.join(room, pid())
        with pytest.raises(CommandUnroutable):
            await client.leave(room, pid())
        assert client.is_connected  # a return is an answer, not a fault of the connection
        assert client.waiting == 0


async def test_missing_exchanges_are_named_when_opening() -> None:
    with pytest.raises(ExchangeNotFound, match="SIGNALING_EVENT_EXCHANGE"):
        async with connected_to(Names()):
            pass


async def test_a_lost_connection_is_reopened_and_the_stream_goes_on(
    service: ServiceProcess, names: Names, room: str
) -> None:
    with TcpProxy.for_url(AMQP_URL, 5672) as proxy:
        async with (
            connected_to(names, proxy.url, reconnect_interval=0.2, timeout=8.0) as client,
            client.events(room) as events,
        ):
            await client.join(room, pid())
            proxy.set_mode("reset")  # every connection through the proxy is cut, new ones too
            await eventually(lambda: not client.is_connected)
            later = asyncio.create_task(client.join(room, pid()))
            await asyncio.sleep(0.5)
            assert not later.done()
            proxy.set_mode("forward")
            joined = await later
            seen = await drain(events)
    assert joined.credentials.room == room
    assert [e.payload for e in seen][-1] == joined


async def test_a_stream_drops_copies_and_says_when_its_reader_fell_behind(
    controller: SignalingClient, names: Names, room: str
) -> None:
    alice, bob = pid(), pid()
    async with controller.events(room, buffer=3) as events:
        joined = await controller.join(room, alice)
        [received] = await drain(events, quiet=0.2)
        # A copy of that event (same message_id), as a command run twice publishes it: dropped.
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            channel = await connection.channel()
            exchange = await channel.get_exchange(names.event_exchange)
            copy = aio_pika.Message(
                codec.encode_event(received.event),
                message_id=received.message_id,
                correlation_id=received.correlation_id,
            )
            await exchange.publish(copy, received.routing_key)
        await controller.join(room, bob)
        [after] = await drain(events, quiet=0.2)
        assert (received.payload, after.participant) == (joined, bob)

        # Four events to a reader that takes none: three are kept, then the stream says so.
        for _ in range(2):
            await controller.join(room, alice)
            await controller.join(room, bob)
        kept = [await anext(events) for _ in range(3)]
        with pytest.raises(EventStreamOverflow, match="fell 3 events behind"):
            await anext(events)
    assert [e.participant for e in kept] == [alice, bob, alice]


async def test_closing_the_client_ends_the_calls_and_streams_waiting_on_it(
    unserved: Names, room: str
) -> None:
    client = connected_to(unserved)
    await client.open()
    async with client.events(room) as events:
        waiting = asyncio.create_task(client.join(room, pid()))
        await eventually(lambda: client.waiting == 1 and bool(client.link.bindings))
        await client.close()
        with pytest.raises(BrokerUnavailable, match="closed"):
            await asyncio.wait_for(waiting, 2)
        assert [e async for e in events] == []
