"""Redis Cluster (testkit/redis_cluster.py: three masters with two replicas each, ``cluster-node-timeout``
1.5 s, a cluster per test) under the real service process and a steady load. Every command the broker
confirmed must be answered exactly once, in per-room order; ``-s`` prints the figures (confirmed,
answered, lost, doubled, reordered, longest answer gap).

1. State spread over the masters, every key of a room in the room's slot.
2. ``kill -9`` of a master right after a restriction was answered: after the cluster's fail-over a new
   joiner is told the same restriction.
3. A live reshard of the slots of active rooms.

Then the state store alone against a cluster: ``WAIT`` counts the replicas of the room's own shard, the
store follows a slot's migration (``ASK``, then ``MOVED``), and TLS with an ACL user reaches every node.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from livekit_signaling.domain.state import RoomState, RosterEntry
from livekit_signaling.store.redis import RedisStateStore
from livekit_signaling.store.replication import ReplicationNotConfirmed
from testkit.load import LoadClient
from testkit.processes import Names
from testkit.redis_cluster import RedisClusterGroup
from testkit.tls import throwaway_certificates
from tests.ha.redis_load import TRANSIENT_RETRY_SECONDS, WRITES, Figures, SteadyLoad
from tests.reliability.conftest import ConnectLoadClient, StartService

pytestmark = pytest.mark.slow

RESTRICTED_ROOMS_METRIC = "livekit_signaling_rooms_with_microphone_restrictions"
#: Both replicas of the restricted room's master pause this long while the restriction is written
#: (test 2): shorter than ``cluster-node-timeout``, so that neither is failed by the others meanwhile.
REPLICAS_PAUSE_SECONDS = 1.0
#: How long the reshard keeps a slot migrating after each key it moved (test 3): commands of the room
#: meet ``ASK`` for keys already moved.
MIGRATING_PAUSE_SECONDS = 0.4


@pytest.fixture
def cluster() -> Iterator[RedisClusterGroup]:
    with RedisClusterGroup() as started:
        print(f"\nRedis Cluster of {len(started.nodes)} nodes started in {started.started_in:.1f} s")
        yield started


def rooms_on_every_master(cluster: RedisClusterGroup, per_master: int) -> list[list[str]]:
    """Per master, ``per_master`` new room ids whose slot it serves."""
    masters = [view for view in cluster.view() if view.is_master and view.slots]
    chosen: dict[int, list[str]] = {view.port: [] for view in masters}
    while any(len(rooms) < per_master for rooms in chosen.values()):
        room = str(uuid.uuid4())
        owner = next(view.port for view in masters if view.owns(cluster.keyslot(room)))
        if len(chosen[owner]) < per_master:
            chosen[owner].append(room)
    return list(chosen.values())


RESTRICTION = {"action": "enable_microphone_restrictions", "unrestricted_participants": ["moderator-1"]}


async def restrict(client: LoadClient, room: str) -> float:
    """A moderator joins ``room`` and enables restrictions; the seconds the answer took."""
    await client.ask(room, "moderator-1", {"action": "join"}, role="moderator", timeout=30)
    answer, waited = await client.ask(room, "moderator-1", RESTRICTION, role="moderator", timeout=30)
    assert answer.message == "microphone_restrictions_enabled"
    return waited


async def joiner_is_told_the_restriction(client: LoadClient, room: str) -> None:
    joined, _ = await client.ask(room, f"joiner-{uuid.uuid4().hex[:6]}", {"action": "join"}, timeout=30)
    state = joined.payload["microphone_restriction_state"]
    assert state == {"type": "enabled", "unrestricted_participants": ["moderator-1"]}, state


async def test_rooms_spread_over_the_masters_and_every_key_of_a_room_is_in_its_slot(
    cluster: RedisClusterGroup,
    start_service: StartService,
    load_client: ConnectLoadClient,
    names: Names,
) -> None:
    """Six rooms under load and three restricted rooms, chosen so that each master serves three. Every
    key the service wrote under its prefix is either a key that spans rooms (the restricted-rooms
    index, the reconcile lists, the replicas' heartbeats, duplicate-window marks) or carries a room as
    its hash tag, and then hashes to that room's slot as Redis computes it (``CLUSTER KEYSLOT``) and
    sits on the one master that serves it. The indexes written after the rooms' scripts hold the three
    restricted rooms: the gauge counts them, the reconcile lists list them."""
    service = await start_service(cluster.service_env())
    client = await load_client()
    await client.watch_dead_letters()
    per_master = rooms_on_every_master(cluster, 3)
    loaded = [room for rooms in per_master for room in rooms[:2]]
    restricted = [rooms[2] for rooms in per_master]
    load = SteadyLoad(client, rooms=loaded).start()
    started = time.monotonic()
    for room in restricted:
        await restrict(client, room)
    await asyncio.sleep(2.0)
    await load.stop()
    answered = await client.wait_answered(timeout=45)

    prefix = names.redis_prefix
    spanning = {f"{prefix}:restricted", f"{prefix}:replicas"}
    reconcile_lists = f"{prefix}:reconcile:"
    holders: dict[str, set[int]] = defaultdict(set)
    untagged: list[str] = []
    marks = room_keys = 0
    to_reconcile: set[str] = set()
    for master in cluster.masters():
        for key in cluster.keys_on(master, f"{prefix}:*"):
            if key.startswith(reconcile_lists):
                with cluster.client(master) as node:
                    to_reconcile |= {room.decode() for room in node.zrange(key, 0, -1)}
                continue
            if key in spanning:
                continue
            if key.startswith(f"{prefix}:msg:"):
                marks += 1
                continue
            start, end = key.find("{"), key.find("}")
            if start == -1 or end < start:
                untagged.append(key)
                continue
            room = key[start + 1 : end]
            assert cluster.server_keyslot(key) == cluster.server_keyslot(room), key
            holders[room].add(master.port)
            room_keys += 1
    gauge = service.metric(RESTRICTED_ROOMS_METRIC)
    print(
        Figures("rooms over three masters", client.books, started).lines(
            rooms_per_master=[len(rooms) for rooms in per_master],
            room_keys=room_keys,
            duplicate_window_marks=marks,
            restricted_rooms_gauge=gauge,
            rooms_to_reconcile=len(to_reconcile),
        )
    )
    assert not untagged, untagged
    assert set(holders) == {*loaded, *restricted}
    assert all(len(ports) == 1 for ports in holders.values()), holders
    assert len({port for ports in holders.values() for port in ports}) == 3
    assert marks > 0
    assert gauge == len(restricted)
    assert to_reconcile == set(restricted)
    for room in restricted:
        await joiner_is_told_the_restriction(client, room)
    assert answered
    client.books.accounting().assert_exactly_once_in_order()
    assert not client.dead_letters


async def test_a_restriction_answered_right_before_its_master_dies_survives_the_fail_over(
    cluster: RedisClusterGroup, start_service: StartService, load_client: ConnectLoadClient
) -> None:
    """As with Sentinel (tests/ha/test_redis_faults.py), the write's window is made certain: both
    replicas of the room's master are paused while the restriction is written (the replication stream
    backed up in the master), one resumes 1 s later, and the master is killed the moment the answer
    arrives; the other replica stays paused until the fail-over is over, so the one that acknowledged is
    the one that can be promoted. The service runs with the cluster's default, REDIS_MIN_REPLICAS=1,
    per shard: the answer waits for that replica. (With 0 the answer goes out at once, the write dies
    with the master, and the joiner is told ``disabled``.) Two rooms under load on each master, so that
    the figures say when the failed master's rooms were written again."""
    await start_service(cluster.service_env())
    client = await load_client()
    await client.watch_dead_letters()
    (room, *failing), *others = rooms_on_every_master(cluster, 3)
    load = SteadyLoad(client, rooms=[*failing, *(r for rooms in others for r in rooms[:2])]).start()
    await asyncio.sleep(2.0)
    await client.ask(room, "moderator-1", {"action": "join"}, role="moderator", timeout=30)
    master = cluster.master_of(cluster.keyslot(room))
    first, second = cluster.replicas_of(master, expected=2)

    first.pause()
    second.pause()
    await asyncio.to_thread(cluster.back_up_replication, master, room)
    resume = asyncio.get_running_loop().call_later(REPLICAS_PAUSE_SECONDS, first.resume)
    answer, waited = await client.ask(room, "moderator-1", RESTRICTION, role="moderator", timeout=30)
    master.kill()
    killed_at = time.monotonic()
    resume.cancel()
    first.resume()
    assert answer.message == "microphone_restrictions_enabled"

    new, failover_seconds = await asyncio.to_thread(cluster.wait_failover, master)
    second.resume()
    await joiner_is_told_the_restriction(client, room)
    await asyncio.sleep(2.0)
    await load.stop()
    answered = await client.wait_answered(timeout=45)

    commands = client.books.commands
    after_kill = [
        at
        for message_id, at in client.books.first_answer_times().items()
        if commands[message_id].action in WRITES
        and commands[message_id].room in failing
        and (commands[message_id].confirmed_at or 0) > killed_at
    ]
    flowing_after = min(after_kill) - killed_at if after_kill else float("inf")
    print(
        Figures("kill -9 of a Redis Cluster master", client.books, killed_at).lines(
            restriction_answered_after=f"{waited:.2f} s (replicas paused {REPLICAS_PAUSE_SECONDS} s)",
            failover=f"{failover_seconds:.1f} s",
            its_rooms_written_again_after=f"{flowing_after:.1f} s",
            dead_letters=len(client.dead_letters),
        )
    )
    assert new is first
    assert waited >= REPLICAS_PAUSE_SECONDS * 0.9, "answered before a replica could hold it"
    assert answered
    client.books.accounting().assert_exactly_once_in_order()
    # How soon is a figure (it depends on the machine's load); answered from where they waited is the mark.
    assert flowing_after < TRANSIENT_RETRY_SECONDS
    assert not client.dead_letters


async def test_a_live_reshard_of_the_slots_of_active_rooms_loses_nothing(
    cluster: RedisClusterGroup, start_service: StartService, load_client: ConnectLoadClient, names: Names
) -> None:
    """The slots of three rooms under load (one per master) and of a restricted room move to another
    master, key by key, as ``redis-cli --cluster reshard`` moves them, while the rooms' commands go on:
    during the migration the old owner answers ``ASK`` for a key already moved (the new owner counts
    the ``ASKING`` the store sends then), afterwards ``MOVED``.
    Nothing is lost, doubled or reordered, no room waits long, and each room's state is on its new
    master, the restriction included."""
    await start_service(cluster.service_env())
    client = await load_client()
    await client.watch_dead_letters()
    per_master = rooms_on_every_master(cluster, 2)
    loaded = [rooms[0] for rooms in per_master]
    restricted = per_master[0][1]
    await restrict(client, restricted)
    load = SteadyLoad(client, rooms=loaded).start()
    await asyncio.sleep(2.0)

    masters = cluster.masters()
    started = time.monotonic()
    moved_keys = 0
    destinations: dict[str, int] = {}
    for room in [*loaded, restricted]:
        slot = cluster.keyslot(room)
        source = cluster.master_of(slot)
        target = masters[(masters.index(source) + 1) % len(masters)]
        moved_keys += await asyncio.to_thread(
            cluster.migrate_slot, slot, target, pause_seconds=MIGRATING_PAUSE_SECONDS
        )
        destinations[room] = target.port
    reshard_seconds = time.monotonic() - started
    redirected = cluster.command_calls("asking")
    await asyncio.sleep(2.0)
    await load.stop()
    answered = await client.wait_answered(timeout=45)

    room_gap, _ = client.books.answer_gaps(1, per_room=True)[0]
    print(
        Figures("live reshard of active rooms' slots", client.books, started).lines(
            slots_moved=len(destinations),
            keys_moved=moved_keys,
            commands_after_asking=redirected,
            reshard=f"{reshard_seconds:.1f} s",
            longest_gap_of_one_room=f"{room_gap:.2f} s",
            dead_letters=len(client.dead_letters),
        )
    )
    for room, port in destinations.items():
        holder = cluster.node_at(port)
        assert cluster.keys_on(holder, f"{names.redis_prefix}:room:{{{room}}}"), room
    await joiner_is_told_the_restriction(client, restricted)
    assert moved_keys >= len(destinations)
    assert redirected > 0, "no command met a key already moved: the reshard was not live"
    assert answered
    client.books.accounting().assert_exactly_once_in_order()
    assert room_gap < 5.0
    assert not client.dead_letters


# -- the state store alone -----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def opened_store(
    cluster: RedisClusterGroup, *, min_replicas: int = 1
) -> AsyncIterator[RedisStateStore]:
    store = RedisStateStore(
        cluster.target(),
        prefix=f"test-{uuid.uuid4().hex[:8]}",
        dedup_window_seconds=60,
        room_idle_seconds=600,
        min_replicas=1,
        wait_timeout_seconds=1.0,
    )
    try:
        yield store
    finally:
        await store.close()


async def save_restricted(store: RedisStateStore, room: str) -> None:
    state = await store.load(room)
    state.participants["m"] = RosterEntry(role="moderator", kind="user", popouts=0)
    await store.save_entry(room, state, "m")
    state.decisions.microphone_restrictions = ["m"]
    await store.save_decisions(room, state)


async def lift(store: RedisStateStore, room: str) -> RoomState:
    state = await store.load(room)
    state.decisions.microphone_restrictions = None
    await store.save_decisions(room, state)
    return state


async def test_writes_wait_for_a_replica_of_the_shard_that_holds_the_room(cluster: RedisClusterGroup) -> None:
    """``REDIS_MIN_REPLICAS`` per shard: with both replicas of one master paused, a room it holds cannot
    have a write confirmed, while a room on another master can."""
    (here, *_), (elsewhere, *_), _ = rooms_on_every_master(cluster, 1)
    async with opened_store(cluster) as store:
        await save_restricted(store, here)
        await save_restricted(store, elsewhere)
        replicas = cluster.replicas_of(cluster.master_of(cluster.keyslot(here)))
        for replica in replicas:
            replica.pause()
        try:
            with pytest.raises(ReplicationNotConfirmed):
                await lift(store, here)
            assert (await lift(store, elsewhere)).decisions.microphone_restrictions is None
        finally:
            for replica in replicas:
                replica.resume()
        for _ in range(50):  # the processor's retries in place
            with contextlib.suppress(ReplicationNotConfirmed):
                await lift(store, here)
                break
            await asyncio.sleep(0.1)
        assert (await store.load(here)).decisions.microphone_restrictions is None
        assert await store.count_restricted_rooms() == 0


async def test_the_store_follows_a_slot_migration_through_ask_and_moved(cluster: RedisClusterGroup) -> None:
    """A room whose slot is migrating: after its key moved, the old owner answers ``ASK`` and the store
    reads and writes the room on the new owner (each command after ``ASKING``), with ``WAIT`` counting
    the new owner's replicas; a room of the same slot that did not exist yet is created there. Once the
    slot is the new owner's, the old one answers ``MOVED`` and the store follows it too."""
    room = str(uuid.uuid4())
    async with opened_store(cluster) as store:
        await save_restricted(store, room)
        slot = cluster.keyslot(room)
        target = next(m for m in cluster.masters() if m is not cluster.master_of(slot))
        migration = cluster.begin_migration(slot, target)
        assert migration is not None
        migration.move_key(store.keys.room(room))
        state = await store.load(room)  # ASK
        assert state.decisions.microphone_restrictions == ["m"]
        state.participants["u"] = RosterEntry(role="user", kind="user", popouts=0)
        await store.save_entry(room, state, "u")  # ASK, and WAIT on the new owner
        while migration.move_key():
            pass
        migration.finish()
        state = await store.load(room)  # MOVED
        assert set(state.participants) == {"m", "u"}
        await lift(store, room)
        assert cluster.keys_on(target, store.keys.room(room))
        assert not cluster.keys_on(migration.source, store.keys.room(room))
        assert await store.count_restricted_rooms() == 0


async def test_tls_and_an_acl_user_reach_every_node() -> None:
    """``REDIS_TLS``, ``REDIS_TLS_CA``, ``REDIS_USERNAME`` and ``REDIS_PASSWORD`` with a cluster whose
    nodes speak TLS only (also between themselves) and know only that user: the right password without
    the user is refused, and the store writes, has the write confirmed by a replica, and reads it back
    (three masters with one replica each)."""
    with (
        throwaway_certificates() as tls,
        RedisClusterGroup(replicas=1, tls=tls, username="signaling", password="node-pw") as cluster,
    ):
        anonymous = redis.Redis(
            port=cluster.nodes[0].port,
            password="node-pw",
            ssl=True,
            ssl_ca_certs=str(tls.ca),
            retry=Retry(NoBackoff(), 0),  # the refusal at once, not after redis-py's retries
        )
        with anonymous, pytest.raises(redis.AuthenticationError):
            anonymous.ping()
        async with opened_store(cluster) as store:
            rooms = [rooms[0] for rooms in rooms_on_every_master(cluster, 1)]
            for room in rooms:
                await save_restricted(store, room)
            assert await store.count_restricted_rooms() == len(rooms)
            for room in rooms:
                assert (await store.load(room)).decisions.microphone_restrictions == ["m"]
