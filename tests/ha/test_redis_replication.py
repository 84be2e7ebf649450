"""The state store against a real Sentinel-managed Redis (master, replica, three Sentinels): a write
counts only once the replica holds it, a read of a write that was not confirmed confirms it first (the
retry of a command whose WAIT fell short), deletions too, and the store follows fail-overs."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import msgspec
import pytest
import redis

from livekit_signaling.domain.errors import StoreUnavailable
from livekit_signaling.domain.permissions import PublishPolicy
from livekit_signaling.domain.state import RoomDecisions, RoomState, RosterEntry
from livekit_signaling.schemas.commands import EnableMicrophoneRestrictions, Envelope
from livekit_signaling.store.connection import RedisConnection
from livekit_signaling.store.encoding import decode_decisions
from livekit_signaling.store.redis import RedisStateStore
from livekit_signaling.store.replication import ReadNotConfirmed, ReplicationGuard, ReplicationNotConfirmed
from testkit.redis_sentinel import RedisNode, RedisSentinelGroup
from tests.unit.fakes import fake_handler

pytestmark = pytest.mark.slow

WAIT_SECONDS = 0.2


@pytest.fixture
def group(request: pytest.FixtureRequest) -> Iterator[RedisSentinelGroup]:
    """Passwords on the nodes and the Sentinels; ``param``: the number of replicas (1), or ``"acl"`` for
    one replica and ACL users instead of the ``default`` user (switched off), as on a managed Redis."""
    param = getattr(request, "param", 1)
    acl = param == "acl"
    with RedisSentinelGroup(
        replicas=1 if acl else param,
        password="node-pw",
        sentinel_password="sentinel-pw",
        username="signaling" if acl else None,
        sentinel_username="sentinel-peer" if acl else None,
    ) as started:
        yield started


@contextlib.asynccontextmanager
async def opened_store(
    group: RedisSentinelGroup, *, min_replicas: int = 1, prefix: str | None = None
) -> AsyncIterator[RedisStateStore]:
    """A store through the group's Sentinels, as a process of the service has one; closed afterwards."""
    store = RedisStateStore(
        group.target(),
        prefix=prefix or f"test-{uuid.uuid4().hex[:8]}",
        dedup_window_seconds=60,
        room_idle_seconds=600,
        min_replicas=min_replicas,
        wait_timeout_seconds=WAIT_SECONDS,
    )
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def store(group: RedisSentinelGroup) -> AsyncIterator[RedisStateStore]:
    async with opened_store(group) as opened:
        yield opened


def stored(
    group: RedisSentinelGroup, node: RedisNode, store: RedisStateStore, room: str
) -> RoomDecisions | None:
    """The room's decisions as one node holds them (not through the store)."""
    with group.client(node) as client:
        data = client.hget(store.keys.room(room), ".d")
    assert data is None or isinstance(data, bytes)
    return decode_decisions(data) if data is not None else None


def restricted() -> RoomState:
    state = RoomState()
    state.participants["m"] = RosterEntry(role="moderator", kind="user", popouts=0)
    state.decisions.microphone_restrictions = ["m"]
    return state


async def test_a_write_counts_once_the_replica_holds_it(
    group: RedisSentinelGroup, store: RedisStateStore
) -> None:
    replica = group.replicas()[0]
    await store.save_decisions("r", restricted())
    held = stored(group, replica, store, "r")
    assert held is not None and held.microphone_restrictions == ["m"]  # there at once, not eventually

    group.stop_node(replica)
    state = await store.load("r")  # a room this process saw confirmed: no barrier, no WAIT
    state.decisions.microphone_restrictions = None
    with pytest.raises(ReplicationNotConfirmed):
        await store.save_decisions("r", state)
    on_master = stored(group, group.master(), store, "r")
    assert on_master is not None and on_master.microphone_restrictions is None  # the master has it


async def test_min_replicas_zero_does_not_wait(group: RedisSentinelGroup) -> None:
    async with opened_store(group, min_replicas=0) as store:
        group.stop_node(group.replicas()[0])
        await store.save_decisions("r", restricted())
        assert (await store.load("r")).decisions.microphone_restrictions == ["m"]


async def test_the_retry_of_a_command_whose_wait_fell_short_does_not_answer_unconfirmed(
    group: RedisSentinelGroup, store: RedisStateStore
) -> None:
    """The subtle case: the write reached the master, WAIT fell short. The processor re-runs the handler,
    which reads the written state and finds nothing to change; it must not answer before the replica
    holds that state."""
    handler = fake_handler(store, policy=PublishPolicy(screen_share_requires_permission=False))
    envelope = Envelope(room="r", participant="m", role="moderator", payload=msgspec.Raw(b"{}"))
    command = EnableMicrophoneRestrictions(unrestricted_participants=["m"])
    state = RoomState()
    state.participants["m"] = RosterEntry(role="moderator", kind="user", popouts=0)
    await store.save_entry("r", state, "m")

    replica = group.replicas()[0]
    group.stop_node(replica)
    with pytest.raises(ReplicationNotConfirmed):
        await handler.handle(envelope, command)
    on_master = stored(group, group.master(), store, "r")
    assert on_master is not None and on_master.microphone_restrictions == ["m"]  # nothing left to change

    for _ in range(3):  # the processor's retries in place, while the replica is away
        with pytest.raises(StoreUnavailable):
            await handler.handle(envelope, command)

    group.start_as_replica(replica)
    result = await handler.handle(envelope, command)
    assert [event.payload.__struct_config__.tag for event in result.events] == [
        "microphone_restrictions_enabled"
    ]
    held = stored(group, replica, store, "r")
    assert held is not None and held.microphone_restrictions == ["m"]


async def test_a_read_of_state_another_process_wrote_confirms_it_first(
    group: RedisSentinelGroup, store: RedisStateStore
) -> None:
    """A writer that died between its write and its WAIT left unconfirmed state; another process (this
    store) reads it: it must not be handed out before the replica holds it."""
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    replica = group.replicas()[0]
    async with opened_store(group, prefix=prefix) as writer:
        group.stop_node(replica)
        with pytest.raises(ReplicationNotConfirmed):
            await writer.save_decisions("r", restricted())
    async with opened_store(group, prefix=prefix) as reader:
        with pytest.raises(StoreUnavailable):
            await reader.load("r")
        group.start_as_replica(replica)
        assert (await reader.load("r")).decisions.microphone_restrictions == ["m"]


async def test_a_read_barrier_confirms_only_the_state_its_own_master_holds(group: RedisSentinelGroup) -> None:
    """A read served by an old master, then its barrier run on the new one (a fail-over in between):
    the barrier must not confirm what only the old master held. It reads the room's stamp back in its
    own pipeline: a stamp the master does not hold is ``ReadNotConfirmed`` (read again), the one it
    holds is confirmed. Before this, any stamp was confirmed by any master's WAIT, and the Redis
    partition test once saw a restriction answered and gone after the heal."""
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    room_key, probe_key = f"{prefix}:room:{{r}}", f"{prefix}:probe:{{r}}"
    with group.client(group.master()) as client:
        client.hset(room_key, ".w", "held-by-this-master")
    guard = ReplicationGuard(min_replicas=1, timeout_seconds=2.0)
    connection = RedisConnection(group.target(), timeout_seconds=5.0)
    try:
        with pytest.raises(ReadNotConfirmed):
            await guard.confirm_read(
                connection, "r", "only-an-old-master-had", probe_key=probe_key, stamp_at=(room_key, ".w")
            )
        assert guard.needs_barrier("r", "only-an-old-master-had")
        await guard.confirm_read(
            connection, "r", "held-by-this-master", probe_key=probe_key, stamp_at=(room_key, ".w")
        )
        assert not guard.needs_barrier("r", "held-by-this-master")
    finally:
        await connection.close()
        with group.client(group.master()) as client:
            client.delete(room_key, probe_key)


async def test_more_rooms_at_work_than_connections_wait_their_turn(
    group: RedisSentinelGroup, store: RedisStateStore
) -> None:
    """200 rooms writing at once through a pool of 100 connections, each write holding its connection
    for a WAIT: every call completes, none fails for want of a connection (redis-py's default pool
    raises instead, its blocking pool lets some waiters time out)."""
    failures: list[str] = []

    async def room(name: str) -> None:
        for _ in range(3):
            try:
                state = await store.load(name)
                state.decisions.screen_share["p"] = not state.decisions.screen_share.get("p", False)
                await store.save_decisions(name, state)
            except StoreUnavailable as error:
                failures.append(str(error.__cause__ or error))

    await asyncio.gather(*(room(f"room-{n}") for n in range(200)))
    assert failures == []
    assert (await store.load("room-0")).version == 3


async def test_closing_a_room_is_confirmed_too(group: RedisSentinelGroup, store: RedisStateStore) -> None:
    await store.save_decisions("r", restricted())
    replica = group.replicas()[0]
    group.stop_node(replica)
    with pytest.raises(ReplicationNotConfirmed):
        await store.delete("r")
    assert stored(group, group.master(), store, "r") is None
    # The retry deletes a key that is gone already (a DEL that writes nothing); the probe still makes
    # its WAIT count.
    with pytest.raises(ReplicationNotConfirmed):
        await store.delete("r")
    with pytest.raises(StoreUnavailable):
        await store.load("r")  # an absent room is confirmed before it is read as empty
    group.start_as_replica(replica)
    await store.delete("r")
    assert stored(group, replica, store, "r") is None
    assert await store.load("r") == RoomState()


@pytest.mark.parametrize("group", [1, "acl"], indirect=True)
async def test_the_store_follows_a_fail_over_and_keeps_what_was_confirmed(
    group: RedisSentinelGroup, store: RedisStateStore
) -> None:
    await store.save_decisions("r", restricted())
    old = group.kill_master()
    with pytest.raises(StoreUnavailable):
        await store.load("r")  # the master is gone and the Sentinels still name it
    new, failover_seconds = await asyncio.to_thread(group.wait_failover, old)
    # The confirmed write survived on the promoted replica.
    state = await store.load("r")
    assert state.decisions.microphone_restrictions == ["m"]
    # With one replica, the new master has none until the old node is back as its replica: writes
    # cannot be confirmed meanwhile ...
    state.decisions.microphone_restrictions = None
    with pytest.raises(ReplicationNotConfirmed):
        await store.save_decisions("r", state)
    await asyncio.to_thread(group.start_as_replica, old)
    # ... and then are (the retry reads what the short write left, confirms it, finds it done). The
    # Sentinels reconfigure the returning node on their own schedule, which can break its link once
    # more right after it synced (seen: two short WAITs within 0.8 s): retry in place, as the command
    # processor does.
    deadline = time.monotonic() + 15
    while True:
        try:
            state = await store.load("r")
            break
        except ReplicationNotConfirmed:
            assert time.monotonic() < deadline, "never confirmed after the old master returned"
            await asyncio.sleep(0.2)
    assert state.decisions.microphone_restrictions is None
    with group.client(old) as client:
        assert client.hget(store.keys.room("r"), ".v") == str(state.version).encode()
    print(f"\nfail-over to {new.address} in {failover_seconds:.1f} s")


@pytest.mark.parametrize("group", [2], indirect=True)
async def test_the_store_follows_a_manual_fail_over(
    group: RedisSentinelGroup, store: RedisStateStore
) -> None:
    """A manual fail-over promotes the replica while the old master keeps running, and Sentinel demotes
    the old one only some 10 s later: until then a connection that was open to it still takes writes
    there (split brain). WAIT finds no replica behind it, so such a write is never acknowledged, and the
    store then asks the Sentinels where the master is now. (Two replicas, so that the new master has
    one at once.)"""
    await store.save_decisions("r", restricted())
    old = group.master()
    with group.client(group.sentinel_nodes[0]) as sentinel:
        sentinel.execute_command("SENTINEL", "FAILOVER", group.master_name)
    new, seconds = await asyncio.to_thread(group.wait_failover, old)
    state = await store.load("r")
    state.decisions.microphone_restrictions = None
    outcomes: list[str] = []
    for _ in range(50):
        try:
            await store.save_decisions("r", state)
        except StoreUnavailable as error:
            outcomes.append(type(error).__name__)
            state = await _load_when_available(store, "r")
            state.decisions.microphone_restrictions = None
            await asyncio.sleep(0.1)
            continue
        outcomes.append("saved")
        break
    print(f"\nmanual fail-over in {seconds:.1f} s; then the write: {outcomes}")
    assert outcomes[0] == "ReplicationNotConfirmed", outcomes  # it reached the old master: not acknowledged
    assert outcomes[-1] == "saved", outcomes
    on_new_master = stored(group, new, store, "r")
    assert on_new_master is not None and on_new_master.microphone_restrictions is None


async def test_a_plain_url_client_treats_a_demoted_master_as_unavailable(group: RedisSentinelGroup) -> None:
    """Without Sentinel (a managed Redis that fails over behind one address), a write to a master that
    became a replica is a transient failure, and the idle connections to it are dropped."""
    master, replica = group.master(), group.replicas()[0]
    for sentinel in group.sentinel_nodes:
        group.stop_node(sentinel)  # they would undo the demotion below
    store = RedisStateStore(
        f"redis://:{group.password}@127.0.0.1:{master.port}/0",
        prefix=f"test-{uuid.uuid4().hex[:8]}",
        dedup_window_seconds=60,
        room_idle_seconds=600,
    )
    try:
        await store.save_decisions("r", restricted())
        with group.client(replica) as client:
            client.execute_command("REPLICAOF", "NO", "ONE")
        with group.client(master) as client:
            client.execute_command("REPLICAOF", "127.0.0.1", replica.port)
        state = await _load_when_available(store, "r")
        with pytest.raises(StoreUnavailable):
            await store.save_decisions("r", state)
    finally:
        await store.close()


async def _load_when_available(store: RedisStateStore, room: str) -> RoomState:
    for _ in range(100):
        try:
            return await store.load(room)
        except StoreUnavailable:
            await asyncio.sleep(0.1)
    raise AssertionError("the store never became available")


@pytest.mark.parametrize("group", ["acl"], indirect=True)
async def test_with_acl_users_only_those_users_get_in(
    group: RedisSentinelGroup, store: RedisStateStore
) -> None:
    """``REDIS_USERNAME`` / ``REDIS_SENTINEL_USERNAME``: the right password without the user name is
    refused by the nodes and the Sentinels (``default`` is off), and the store, with both users, writes
    through the Sentinels' master and has its writes confirmed by the replica (which syncs as that user).
    The fail-over under ACL users is the parametrised test above."""
    for node, password in (
        (group.master(), group.password),
        (group.sentinel_nodes[0], group.sentinel_password),
    ):
        anonymous = redis.Redis(host="127.0.0.1", port=node.port, password=password)
        with anonymous, pytest.raises(redis.AuthenticationError):
            anonymous.ping()
    await store.save_decisions("r", restricted())
    held = stored(group, group.replicas()[0], store, "r")
    assert held is not None and held.microphone_restrictions == ["m"]
    assert (await store.load("r")).decisions.microphone_restrictions == ["m"]
