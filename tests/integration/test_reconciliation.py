"""Restrictions hold whatever LiveKit loses: with the emulator sending no webhooks, the service's
reconciler finds what LiveKit holds against the room's decisions and repairs it, within two intervals.

The service here reconciles every ``INTERVAL`` seconds and requires a grant for screen sharing.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from testkit.amqp import SignalingClient, delete_topology
from testkit.emulator import Emulator, allowed_sources, microphone_tracks
from testkit.processes import EmulatorProcess, Names, ServiceProcess

INTERVAL = 0.5
#: A difference is repaired within two intervals; the margin is for the check itself on a busy machine.
REPAIRED_WITHIN = 2 * INTERVAL + 1.0
PARTITIONS = 2
EVERYTHING = {"camera", "microphone", "screen_share", "screen_share_audio"}
RESTRICTED = {"camera", "screen_share", "screen_share_audio"}


@pytest.fixture(scope="module")
def reconciling(emulator_process: EmulatorProcess) -> Iterator[ServiceProcess]:
    names = Names()
    service = ServiceProcess(
        names,
        emulator_process.url,
        partitions=PARTITIONS,
        env={
            "RECONCILE_INTERVAL_SECONDS": str(INTERVAL),
            "SCREEN_SHARE_REQUIRES_PERMISSION": "true",
            "LIVEKIT_REQUEST_TIMEOUT_SECONDS": "2",
            "COMMAND_DEADLINE_SECONDS": "5",
        },
        name="reconcile",
    ).start()
    yield service
    service.stop()
    asyncio.run(delete_topology(names, PARTITIONS))


@pytest.fixture
async def signaling(reconciling: ServiceProcess) -> AsyncIterator[SignalingClient]:
    async with SignalingClient(reconciling.names) as client:
        yield client


@pytest.fixture
async def without_webhooks(emulator: Emulator, reconciling: ServiceProcess) -> AsyncIterator[Emulator]:
    """LiveKit is told where the service's webhooks go, and sends none."""
    await emulator.set_webhook(f"http://127.0.0.1:{reconciling.port}/webhook")
    await emulator.set_webhooks(enabled=False)
    try:
        yield emulator
    finally:
        await emulator.set_webhook(None)
        await emulator.set_webhooks(enabled=True)
    assert reconciling.metric("livekit_signaling_webhooks_total") == 0


async def join(client: SignalingClient, room: str, participant: str, *, role: str = "user") -> str:
    """The participant's token, minted now."""
    answer = await client.reply(room, participant, {"action": "join"}, role=role)
    return str(answer.payload["credentials"]["token"])


async def decide(client: SignalingClient, room: str, moderator: str, payload: dict[str, object]) -> None:
    await client.reply(room, moderator, payload, role="moderator")


async def sources(emulator: Emulator, room: str) -> dict[str, set[str]]:
    """What LiveKit lets each identity of the room publish now."""
    return {identity: allowed_sources(info) for identity, info in (await emulator.participants(room)).items()}


async def within(seconds: float, condition: Callable[[], Awaitable[bool]]) -> float:
    """Seconds until ``condition`` held; fails after ``seconds``."""
    started = time.monotonic()
    while not await condition():
        if time.monotonic() - started > seconds:
            raise AssertionError(f"not within {seconds} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def holds_within_two_intervals(emulator: Emulator, room: str, expected: dict[str, set[str]]) -> None:
    """Until LiveKit lets each identity of the room publish exactly ``expected``."""

    async def held() -> bool:
        return await sources(emulator, room) == expected

    await within(REPAIRED_WITHIN, held)


async def three_joined(signaling: SignalingClient, room: str) -> tuple[str, str, str, dict[str, str]]:
    """A moderator, a participant who will stay unrestricted and one who will not, joined now (before
    any restriction), with the tokens they were given."""
    moderator, speaker, late = (str(uuid.uuid4()) for _ in range(3))
    tokens = {
        moderator: await join(signaling, room, moderator, role="moderator"),
        speaker: await join(signaling, room, speaker),
        late: await join(signaling, room, late),
    }
    return moderator, speaker, late, tokens


def only_speaking(speaker: str) -> dict[str, object]:
    return {"action": "enable_microphone_restrictions", "unrestricted_participants": [speaker]}


async def test_a_late_connect_with_a_token_from_before_the_restriction_is_repaired(
    signaling: SignalingClient, without_webhooks: Emulator, room: str, reconciling: ServiceProcess
) -> None:
    emulator = without_webhooks
    moderator, speaker, late, tokens = await three_joined(signaling, room)
    await decide(signaling, room, moderator, only_speaking(speaker))
    # Everybody connects only now, with a token minted while everybody could speak.
    for identity, token in tokens.items():
        await emulator.connect(token)
        await emulator.publish(room, identity, "microphone")
    assert "microphone" in (await sources(emulator, room))[late]

    async def repaired() -> bool:
        return "microphone" not in (await sources(emulator, room))[late]

    await within(REPAIRED_WITHIN, repaired)
    info = await emulator.participant(room, late)
    assert microphone_tracks(info) == []  # LiveKit unpublished the track the permission no longer allows
    held = await sources(emulator, room)
    # The exempt moderator and the unrestricted participant keep their sources, microphone included.
    assert held == {moderator: EVERYTHING, speaker: {"camera", "microphone"}, late: {"camera"}}
    assert len(microphone_tracks(await emulator.participant(room, speaker))) == 1
    assert reconciling.metric("livekit_signaling_reconcile_repairs_total", kind="microphone") >= 1


async def test_livekit_forgets_the_room_and_the_clients_reconnect_with_their_tokens(
    signaling: SignalingClient, without_webhooks: Emulator, room: str
) -> None:
    emulator = without_webhooks
    moderator, speaker, late, tokens = await three_joined(signaling, room)
    for token in tokens.values():
        await emulator.connect(token)
    await decide(signaling, room, moderator, only_speaking(speaker))
    expected = {moderator: EVERYTHING, speaker: {"camera", "microphone"}, late: {"camera"}}
    assert await sources(emulator, room) == expected  # the command itself updated LiveKit

    # LiveKit restarts: it forgets the room and every permission; the clients reconnect with the
    # tokens they hold, minted before the restriction.
    assert sorted(await emulator.forget(room)) == sorted(tokens)
    for identity, token in tokens.items():
        await emulator.connect(token)
        await emulator.publish(room, identity, "microphone")
    assert "microphone" in (await sources(emulator, room))[late]

    await holds_within_two_intervals(emulator, room, expected)


async def test_screen_share_grants_and_revocations_hold_for_tokens_minted_before_them(
    signaling: SignalingClient, without_webhooks: Emulator, room: str
) -> None:
    emulator = without_webhooks
    moderator, presenter, former, viewer = (str(uuid.uuid4()) for _ in range(4))
    moderator_token = await join(signaling, room, moderator, role="moderator")
    presenter_token = await join(signaling, room, presenter)  # no screen sharing yet
    viewer_token = await join(signaling, room, viewer)
    await join(signaling, room, former)
    await decide(
        signaling, room, moderator, {"action": "grant_screen_share_permission", "participants": [former]}
    )
    refreshed = await signaling.reply(room, former, {"action": "create_new_access_token"})
    former_token = str(refreshed.payload["token"])  # may share its screen
    await decide(
        signaling, room, moderator, {"action": "revoke_screen_share_permission", "participants": [former]}
    )
    await decide(
        signaling, room, moderator, {"action": "grant_screen_share_permission", "participants": [presenter]}
    )
    for token in (moderator_token, presenter_token, former_token, viewer_token):
        await emulator.connect(token)
    held = await sources(emulator, room)
    assert "screen_share" not in held[presenter] and "screen_share" in held[former]

    expected = {
        moderator: EVERYTHING,
        presenter: EVERYTHING,  # granted after its token was minted
        former: {"camera", "microphone"},  # revoked after its token was minted
        viewer: {"camera", "microphone"},  # no decision: the default (a grant is required)
    }

    await holds_within_two_intervals(emulator, room, expected)


async def test_a_moderator_who_lifts_restrictions_while_a_repair_is_in_flight_is_the_one_that_holds(
    signaling: SignalingClient, without_webhooks: Emulator, room: str
) -> None:
    emulator = without_webhooks
    moderator, late = str(uuid.uuid4()), str(uuid.uuid4())
    await join(signaling, room, moderator, role="moderator")
    late_token = await join(signaling, room, late)
    await decide(
        signaling,
        room,
        moderator,
        {"action": "enable_microphone_restrictions", "unrestricted_participants": []},
    )
    # The repair's UpdateParticipant will take 0.4 s in LiveKit: long enough to decide meanwhile.
    await emulator.delay("UpdateParticipant", 0.4)
    try:
        await emulator.clear_calls()
        await emulator.connect(late_token)

        async def repair_in_flight() -> bool:
            return "UpdateParticipant" in await emulator.calls()

        await within(REPAIRED_WITHIN, repair_in_flight)
        await decide(signaling, room, moderator, {"action": "disable_microphone_restrictions"})
    finally:
        await emulator.delay("UpdateParticipant", 0)
    # The decision ran after the repair, in the room's order: from its answer on, and through the
    # passes that follow, the microphone is allowed.
    deadline = time.monotonic() + 3 * INTERVAL
    while time.monotonic() < deadline:
        assert (await sources(emulator, room))[late] == {"camera", "microphone"}
        await asyncio.sleep(0.05)


async def test_clients_the_room_no_longer_knows_are_disconnected(
    signaling: SignalingClient, without_webhooks: Emulator, room: str, reconciling: ServiceProcess
) -> None:
    emulator = without_webhooks
    moderator, stays, leaver = (str(uuid.uuid4()) for _ in range(3))
    await join(signaling, room, moderator, role="moderator")
    stays_token = await join(signaling, room, stays)
    leaver_token = await join(signaling, room, leaver)
    popout = await signaling.reply(room, leaver, {"action": "request_popout_stream_access_token"})
    popout_token = str(popout.payload["token"])
    await decide(
        signaling,
        room,
        moderator,
        {"action": "enable_microphone_restrictions", "unrestricted_participants": []},
    )
    await signaling.send(room, leaver, {"action": "leave"})  # answered with no event
    handled = await asyncio.to_thread(
        reconciling.wait_metric, "livekit_signaling_commands_total", 1, action="leave"
    )
    assert handled >= 1
    # The leaver's client, and its popout, come back with the tokens they still hold: LiveKit's
    # RemoveParticipant disconnected them but cannot revoke a token.
    for token in (stays_token, leaver_token, popout_token):
        await emulator.connect(token)
    assert set(await sources(emulator, room)) == {stays, leaver, f"{leaver}.popout1"}

    async def only_the_known_remain() -> bool:
        return set(await sources(emulator, room)) == {stays}

    await within(REPAIRED_WITHIN, only_the_known_remain)
    assert reconciling.metric("livekit_signaling_reconcile_repairs_total", kind="unknown_identity") >= 2
