"""The Redis store's key names: in a cluster every key of a room hashes to the room's slot (as redis-py
computes slots; tests/ha/test_redis_cluster.py asks the servers), and one Redis keeps the names it always
had, so that an upgrade finds the state of rooms in flight."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from livekit_signaling.schemas.commands import ID_PATTERN, MAX_ID_LENGTH
from livekit_signaling.store.keys import ClusterKeys, RedisKeys, keys_for
from livekit_signaling.store.target import RedisTarget

ROOM_IDS = st.from_regex(ID_PATTERN, fullmatch=True).filter(lambda room: len(room) <= MAX_ID_LENGTH)


@given(ROOM_IDS)
def test_every_key_of_a_room_hashes_to_the_rooms_slot_in_a_cluster(room: str) -> None:
    keys = ClusterKeys("livekit-signaling")
    slot = key_slot(room.encode())
    assert key_slot(keys.room(room).encode()) == slot
    assert key_slot(keys.probe(room).encode()) == slot


def test_rooms_spread_over_slots_in_a_cluster() -> None:
    keys = ClusterKeys("livekit-signaling")
    slots = {key_slot(keys.room(f"room-{n}").encode()) for n in range(1000)}
    assert len(slots) > 900


def test_one_redis_keeps_its_key_names() -> None:
    keys = RedisKeys("p")
    assert keys.room("r") == "p:room:r"
    assert keys.probe("r") == "p:replication-probe"
    assert keys.restricted == "p:restricted"
    assert keys.processed("m") == "p:msg:m"
    assert keys.replicas == "p:replicas"


def test_the_layout_follows_the_target() -> None:
    assert type(keys_for(RedisTarget(url="redis://r/0"), "p")) is RedisKeys
    assert type(keys_for(RedisTarget(sentinels=(("s", 26379),)), "p")) is RedisKeys
    cluster = keys_for(RedisTarget(cluster_nodes=(("c", 6379),)), "p")
    assert type(cluster) is ClusterKeys
    assert cluster.room("r") == "p:room:{r}"
    assert cluster.restricted == "p:restricted"
