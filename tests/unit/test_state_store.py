"""One suite for both state stores: whatever replicas share through Redis behaves as in memory."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from service.domain.errors import StaleState
from service.domain.ports import StateStore
from service.domain.state import RoomState, RosterEntry
from service.store.memory import MemoryStateStore
from service.store.redis import RedisStateStore
from tests.support.processes import REDIS_URL


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[StateStore]:
    if request.param == "memory":
        yield MemoryStateStore(dedup_window_seconds=1, room_idle_seconds=60)
        return
    prefix = f"test-{uuid.uuid4().hex[:10]}"
    redis_store = RedisStateStore(REDIS_URL, prefix=prefix, dedup_window_seconds=1, room_idle_seconds=60)
    yield redis_store
    client = redis_store._redis
    keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
    if keys:
        await client.delete(*keys)
    await redis_store.close()


async def test_state_round_trips_and_versions(store: StateStore) -> None:
    room = await store.load("r")
    assert room == RoomState()
    room.participants["p"] = RosterEntry(role="moderator", kind="sip", popouts=2)
    room.microphone_restrictions = []
    room.screen_share["p"] = False
    await store.save("r", room)
    loaded = await store.load("r")
    assert loaded.version == 1
    assert loaded.participants == {"p": RosterEntry(role="moderator", kind="sip", popouts=2)}
    assert loaded.microphone_restrictions == []  # enabled with nobody, not disabled
    assert loaded.screen_share == {"p": False}


async def test_concurrent_writers_are_fenced(store: StateStore) -> None:
    first = await store.load("r")
    second = await store.load("r")
    first.microphone_restrictions = ["a"]
    await store.save("r", first)
    second.microphone_restrictions = None
    with pytest.raises(StaleState):
        await store.save("r", second)
    assert (await store.load("r")).microphone_restrictions == ["a"]


async def test_loaded_state_is_a_copy(store: StateStore) -> None:
    room = await store.load("r")
    await store.save("r", room)
    mutated = await store.load("r")
    mutated.participants["x"] = RosterEntry(role="user", kind="user")
    assert (await store.load("r")).participants == {}


async def test_delete_drops_the_room_and_its_restriction(store: StateStore) -> None:
    room = await store.load("r")
    room.microphone_restrictions = []
    await store.save("r", room)
    assert await store.count_restricted_rooms() == 1
    await store.delete("r")
    assert await store.load("r") == RoomState()
    assert await store.count_restricted_rooms() == 0


async def test_processed_message_ids_expire_after_the_window(store: StateStore) -> None:
    assert not await store.is_processed("m1")
    await store.mark_processed("m1")
    assert await store.is_processed("m1")
    assert not await store.is_processed("m2")
    await asyncio.sleep(1.2)
    assert not await store.is_processed("m1")
