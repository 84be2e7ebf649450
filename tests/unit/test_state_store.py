"""One suite for both state stores: whatever replicas share through Redis behaves as in memory, on one
Redis and on a Redis Cluster (three masters without replicas, started once for the module: the store
writes its indexes after the room's script there, and routes every command to its key's master)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from livekit_signaling.domain.errors import StaleState
from livekit_signaling.domain.ports import StateStore
from livekit_signaling.domain.state import RoomDecisions, RoomState, RosterEntry
from livekit_signaling.store.memory import MemoryStateStore
from livekit_signaling.store.redis import RedisStateStore
from livekit_signaling.store.target import RedisTarget
from testkit.processes import REDIS_URL
from testkit.redis_cluster import RedisClusterGroup

USER = RosterEntry(role="user", kind="user")
MODERATOR = RosterEntry(role="moderator", kind="sip", popouts=2)

StoreFactory = Callable[..., StateStore]


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[RedisClusterGroup]:
    with RedisClusterGroup(replicas=0) as cluster:
        yield cluster


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
async def make_store(request: pytest.FixtureRequest) -> AsyncIterator[StoreFactory]:
    """Stores of the parametrized kind, with the test's idle expiry; Redis keys are removed after (a
    cluster goes with the module)."""
    prefix = f"test-{uuid.uuid4().hex[:10]}"
    redis_stores: list[RedisStateStore] = []
    target: RedisTarget | str = REDIS_URL
    if request.param == "redis-cluster":
        target = request.getfixturevalue("redis_cluster").target(min_replicas=0)

    def make(*, room_idle_seconds: float = 60, lift_grace_seconds: float = 0) -> StateStore:
        if request.param == "memory":
            return MemoryStateStore(
                dedup_window_seconds=1,
                room_idle_seconds=room_idle_seconds,
                lift_grace_seconds=lift_grace_seconds,
            )
        redis_store = RedisStateStore(
            target,
            prefix=prefix,
            dedup_window_seconds=1,
            room_idle_seconds=room_idle_seconds,
            partitions=4,
            lift_grace_seconds=lift_grace_seconds,
        )
        redis_stores.append(redis_store)
        return redis_store

    yield make
    for redis_store in redis_stores:
        if request.param == "redis":
            client = redis_store._redis
            keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
            if keys:
                await client.delete(*keys)
        await redis_store.close()


@pytest.fixture
def store(make_store: StoreFactory) -> StateStore:
    return make_store()


async def joined(store: StateStore, room: str, participant: str, entry: RosterEntry = USER) -> RoomState:
    """What a join does: load the participant's part of the room, add its entry, save that entry."""
    state = await store.load(room, [participant])
    state.participants[participant] = entry
    await store.save_entry(room, state, participant)
    return state


async def restrict(store: StateStore, room: str, unrestricted: list[str] | None) -> None:
    """What enabling (a list of who may still speak) or disabling (None) microphone restrictions saves."""
    state = await store.load(room)
    state.decisions.microphone_restrictions = unrestricted
    await store.save_decisions(room, state)


async def test_a_new_room_is_empty_at_version_0(store: StateStore) -> None:
    assert await store.load("r") == RoomState()
    assert await store.load("r", ["p"]) == RoomState()


async def test_parts_round_trip_and_every_write_bumps_the_version(store: StateStore) -> None:
    await joined(store, "r", "p", MODERATOR)
    await joined(store, "r", "q")
    state = await store.load("r")
    state.decisions.microphone_restrictions = []
    state.decisions.screen_share["q"] = False
    await store.save_decisions("r", state)
    assert state.version == 3
    loaded = await store.load("r")
    assert loaded.version == 3
    assert loaded.participants == {"p": MODERATOR, "q": USER}
    assert loaded.decisions.microphone_restrictions == []  # enabled with nobody, not disabled
    assert loaded.decisions.screen_share == {"q": False}


async def test_a_participant_load_holds_only_the_named_entries_that_exist(store: StateStore) -> None:
    for participant in ("a", "b", "c"):
        await joined(store, "r", participant)
    state = await store.load("r")
    state.decisions = RoomDecisions(microphone_restrictions=["b"])
    await store.save_decisions("r", state)
    part = await store.load("r", ["b", "nobody"])
    assert part.participants == {"b": USER}
    assert part.decisions.microphone_restrictions == ["b"]  # the decisions always come along
    assert part.version == 4


async def test_an_entry_write_changes_only_its_entry(store: StateStore) -> None:
    await joined(store, "r", "a")
    await joined(store, "r", "b")
    state = await store.load("r", ["a"])
    state.participants["a"] = MODERATOR
    state.participants["b"] = MODERATOR  # not the entry being saved: must not be written
    await store.save_entry("r", state, "a")
    assert (await store.load("r")).participants == {"a": MODERATOR, "b": USER}


async def test_an_absent_entry_is_removed(store: StateStore) -> None:
    await joined(store, "r", "a")
    await joined(store, "r", "b")
    state = await store.load("r", ["a"])
    del state.participants["a"]
    await store.save_entry("r", state, "a")
    loaded = await store.load("r")
    assert loaded.participants == {"b": USER}
    assert loaded.version == 3


async def test_concurrent_writers_are_fenced(store: StateStore) -> None:
    first = await store.load("r")
    second = await store.load("r")
    first.decisions.microphone_restrictions = ["a"]
    await store.save_decisions("r", first)
    second.decisions.microphone_restrictions = None
    with pytest.raises(StaleState):
        await store.save_decisions("r", second)
    assert second.version == 0  # a fenced write leaves the loaded version as it was
    assert (await store.load("r")).decisions.microphone_restrictions == ["a"]


async def test_writes_of_different_entries_are_fenced_against_each_other(store: StateStore) -> None:
    """Two replicas handling the room during a hand-over, each joining someone else: the later one
    retries on a fresh load rather than answering from decisions that may have changed."""
    first = await store.load("r", ["a"])
    second = await store.load("r", ["b"])
    first.participants["a"] = USER
    await store.save_entry("r", first, "a")
    second.participants["b"] = USER
    with pytest.raises(StaleState):
        await store.save_entry("r", second, "b")
    assert (await store.load("r")).participants == {"a": USER}


async def test_an_entry_write_fences_a_room_wide_write_that_read_the_roster_before(store: StateStore) -> None:
    """Restrictions read the whole roster to tell everybody: a join in between must make them retry,
    or the joiner would be missed."""
    room_wide = await store.load("r")
    await joined(store, "r", "late")
    room_wide.decisions.microphone_restrictions = []
    with pytest.raises(StaleState):
        await store.save_decisions("r", room_wide)
    # And the other way round: decisions changed since a join loaded them.
    stale = await store.load("r", ["x"])
    await store.save_decisions("r", await store.load("r"))
    stale.participants["x"] = USER
    with pytest.raises(StaleState):
        await store.save_entry("r", stale, "x")


async def test_loaded_state_is_a_copy(store: StateStore) -> None:
    await joined(store, "r", "a")
    mutated = await store.load("r")
    mutated.participants["x"] = USER
    mutated.decisions.screen_share["a"] = True
    partial = await store.load("r", ["a"])
    partial.participants.clear()
    loaded = await store.load("r")
    assert loaded.participants == {"a": USER}
    assert loaded.decisions == RoomDecisions()


async def test_delete_drops_the_room_and_its_restriction(store: StateStore) -> None:
    await joined(store, "r", "a")
    await restrict(store, "r", [])
    assert await store.count_restricted_rooms() == 1
    await store.delete("r")
    assert await store.load("r") == RoomState()
    assert await store.count_restricted_rooms() == 0


async def test_restricted_rooms_are_counted_by_their_decisions(store: StateStore) -> None:
    for room in ("r1", "r2"):
        await restrict(store, room, ["x"])
    await joined(store, "r1", "a")  # an entry write leaves the room restricted
    assert await store.count_restricted_rooms() == 2
    await restrict(store, "r2", None)
    assert await store.count_restricted_rooms() == 1


async def test_an_idle_room_expires_with_its_restriction(make_store: StoreFactory) -> None:
    store = make_store(room_idle_seconds=1)
    await joined(store, "r", "a")
    await restrict(store, "r", [])
    await asyncio.sleep(1.3)
    await joined(store, "other", "b")  # the memory store looks for idle rooms on writes
    assert await store.load("r") == RoomState()
    assert await store.count_restricted_rooms() == 0


async def test_an_entry_write_keeps_the_whole_room_and_its_restriction_alive(
    make_store: StoreFactory,
) -> None:
    store = make_store(room_idle_seconds=2)
    await joined(store, "r", "a")
    await restrict(store, "r", [])
    await asyncio.sleep(1.2)
    await joined(store, "r", "b")
    await asyncio.sleep(1.2)  # past the first expiry, within the one the join renewed
    await joined(store, "other", "c")
    loaded = await store.load("r")
    assert loaded.participants == {"a": USER, "b": USER}
    assert loaded.decisions.microphone_restrictions == []
    assert await store.count_restricted_rooms() == 1


async def test_rooms_with_standing_decisions_are_listed_on_their_commands_partition(
    make_store: StoreFactory,
) -> None:
    store = make_store(lift_grace_seconds=0.6)
    await joined(store, "quiet", "a")  # no decisions: nothing to enforce
    state = await store.load("restricted")
    state.decisions.microphone_restrictions = []
    await store.save_decisions("restricted", state, partition=1)
    state = await store.load("screen")
    state.decisions.screen_share["a"] = False
    await store.save_decisions("screen", state, partition=2)
    state = await store.load("quiet", ["b"])
    state.participants["b"] = USER
    await store.save_entry("quiet", state, "b", partition=0)
    assert sorted(await store.rooms_to_reconcile({0, 1, 2, 3})) == [("restricted", 1), ("screen", 2)]
    assert await store.rooms_to_reconcile({0, 1}) == [("restricted", 1)]  # partition 2 is not ours
    # Lifted decisions stay listed while a token minted before the lift can still connect.
    state = await store.load("restricted")
    state.decisions.microphone_restrictions = None
    await store.save_decisions("restricted", state, partition=1)
    assert await store.rooms_to_reconcile({1}) == [("restricted", 1)]
    await asyncio.sleep(0.7)
    assert await store.rooms_to_reconcile({1}) == []
    await store.delete("screen", partition=2)
    assert await store.rooms_to_reconcile({0, 1, 2, 3}) == []


async def test_processed_message_ids_expire_after_the_window(store: StateStore) -> None:
    assert not await store.is_processed("m1")
    await store.mark_processed("m1")
    assert await store.is_processed("m1")
    assert not await store.is_processed("m2")
    await asyncio.sleep(1.2)
    assert not await store.is_processed("m1")


async def test_load_unless_processed_reads_the_room_or_says_the_command_was_answered(
    store: StateStore,
) -> None:
    state = await store.load("room")
    state.participants["alice"] = USER
    await store.save_entry("room", state, "alice", partition=1)
    loaded = await store.load_unless_processed("m1", "room", ("alice", "bob"))
    assert loaded is not None
    assert loaded.participants == {"alice": USER}
    assert loaded.version == state.version  # a write fenced by it succeeds
    loaded.participants["bob"] = MODERATOR
    await store.save_entry("room", loaded, "bob", partition=1)
    await store.mark_processed("m1")
    assert await store.load_unless_processed("m1", "room", ("alice",)) is None
    fresh = await store.load_unless_processed("m2", "other room", ("alice",))
    assert fresh is not None
    assert fresh.version == 0
    assert fresh.participants == {}


async def test_a_large_room_is_kept_as_one_entry_per_participant() -> None:
    """The Redis layout that keeps a participant's command from reading or rewriting the roster: one
    hash field per participant beside the version and the decisions, all under one expiring key."""
    prefix = f"test-{uuid.uuid4().hex[:10]}"
    store = RedisStateStore(REDIS_URL, prefix=prefix, dedup_window_seconds=1, room_idle_seconds=60)
    try:
        for number in range(300):
            await joined(store, "r", f"p{number}")
        client = store._redis
        # The participants and the version (decisions are stored once a moderator made some).
        assert await client.hlen(f"{prefix}:room:r") == 300 + 1  # type: ignore[misc]
        assert await client.hget(f"{prefix}:room:r", ".v") == b"300"  # type: ignore[misc]
        assert 0 < await client.ttl(f"{prefix}:room:r") <= 60
        assert len((await store.load("r")).participants) == 300
    finally:
        await store._redis.delete(f"{prefix}:room:r")
        await store.close()


async def test_a_message_id_marked_again_is_remembered_from_then(store: StateStore) -> None:
    await store.mark_processed("m1")
    await asyncio.sleep(0.7)
    await store.mark_processed("m1")
    await asyncio.sleep(0.6)  # past the first window, within the second
    await store.mark_processed("m2")  # the memory store forgets expired ids on writes
    assert await store.is_processed("m1")
