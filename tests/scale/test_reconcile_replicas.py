"""Several replicas reconcile the rooms with LiveKit between them: each room by exactly one, the replica
that holds its partition (webhooks off: the session's emulator process sends none)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import pytest

from testkit.amqp import SignalingClient
from testkit.emulator import Emulator, allowed_sources
from testkit.processes import REDIS_URL, EmulatorProcess, Names, ServiceProcess

pytestmark = pytest.mark.slow

PARTITIONS = 4
INTERVAL = 0.5
ROOMS = 20
REPLICA_ENV = {
    "REDIS_URL": REDIS_URL,
    "REBALANCE_INTERVAL_SECONDS": "0.5",
    "RECONCILE_INTERVAL_SECONDS": str(INTERVAL),
    "LIVEKIT_REQUEST_TIMEOUT_SECONDS": "2",
    "COMMAND_DEADLINE_SECONDS": "5",
}


@pytest.fixture
def replicas(names: Names, emulator_process: EmulatorProcess) -> Iterator[list[ServiceProcess]]:
    started = [
        ServiceProcess(
            names, emulator_process.url, partitions=PARTITIONS, env=REPLICA_ENV, name=f"reconcile{n}"
        ).start()
        for n in range(2)
    ]
    yield started
    for replica in started:
        replica.stop()


async def balance(client: SignalingClient, replicas: list[ServiceProcess], rooms: list[str]) -> None:
    """Traffic on every room until each replica is the active consumer of its fair share."""
    deadline = time.monotonic() + 30
    held: list[float] = []
    while time.monotonic() < deadline:
        ids = [await client.send(room, "warmup", {"action": "create_new_access_token"}) for room in rooms]
        await client.wait_for(lambda e, sent=set(ids): e.correlation_id in sent, count=len(ids), timeout=10)
        held = [replica.metric("livekit_signaling_partitions_active") for replica in replicas]
        if held == [PARTITIONS / len(replicas)] * len(replicas):
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"partitions never balanced: {held}")


def figures(replica: ServiceProcess) -> dict[str, float]:
    return {
        "rooms": replica.metric("livekit_signaling_reconcile_rooms"),
        "checked": replica.metric("livekit_signaling_reconcile_rooms_checked_total"),
        "passes": replica.metric("livekit_signaling_reconcile_pass_duration_seconds_count"),
        "lists": replica.metric("livekit_signaling_livekit_requests_total", method="ListParticipants"),
        "repairs": replica.metric("livekit_signaling_reconcile_repairs_total"),
    }


async def test_each_room_is_reconciled_by_exactly_one_replica(
    client: SignalingClient, emulator: Emulator, replicas: list[ServiceProcess]
) -> None:
    rooms = [str(uuid.uuid4()) for _ in range(ROOMS)]
    await balance(client, replicas, rooms)
    late = {room: str(uuid.uuid4()) for room in rooms}
    tokens = {}
    for room in rooms:
        await client.reply(room, "mod", {"action": "join"}, role="moderator")
        answer = await client.reply(room, late[room], {"action": "join"})
        tokens[room] = answer.payload["credentials"]["token"]
        await client.reply(
            room,
            "mod",
            {"action": "enable_microphone_restrictions", "unrestricted_participants": []},
            role="moderator",
        )
    for room in rooms:  # every room gets a late client with a token from before its restriction
        await emulator.connect(tokens[room])

    async def all_repaired() -> bool:
        for room in rooms:
            if "microphone" in allowed_sources(await emulator.participant(room, late[room])):
                return False
        return True

    deadline = time.monotonic() + 2 * INTERVAL + 3
    while not await all_repaired():
        assert time.monotonic() < deadline, "not every room was repaired"
        await asyncio.sleep(0.1)

    await asyncio.sleep(2 * INTERVAL)  # every replica has begun a pass since the last command
    before = [figures(replica) for replica in replicas]
    await asyncio.sleep(4 * INTERVAL)
    after = [figures(replica) for replica in replicas]
    print(f"\nper replica, before and after {4 * INTERVAL} s: {before} {after}")

    # Every room on exactly one replica: the replicas' rooms add up to the rooms, and both have some.
    assert sum(figures["rooms"] for figures in after) == ROOMS
    assert all(figures["rooms"] > 0 for figures in after)
    # Each late client was repaired once, by one replica.
    assert sum(figures["repairs"] for figures in after) == ROOMS
    for first, last in zip(before, after, strict=True):
        checked = last["checked"] - first["checked"]
        passes = last["passes"] - first["passes"]
        # One ListParticipants per check, and each pass checks the replica's own rooms once. A check
        # is counted when it ends, its call when the call does: the checks in flight at either end
        # of the window (on a loaded machine up to a pass's rooms) may fall on either side, which
        # keeps the difference far below a second call per check.
        assert abs(last["lists"] - first["lists"] - checked) <= last["rooms"]
        assert last["rooms"] * (passes - 1) <= checked <= last["rooms"] * (passes + 1)
