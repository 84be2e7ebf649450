"""State in Redis, shared by every replica (``REDIS_URL``, ``REDIS_SENTINELS`` or ``REDIS_CLUSTER_NODES``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any, TypeVar

from redis.exceptions import RedisClusterException, RedisError

from livekit_signaling.domain.errors import StaleState, StoreUnavailable
from livekit_signaling.domain.state import RoomDecisions, RoomState
from livekit_signaling.store.connection import AnyPipeline, RedisConnection, failure_text, is_transient
from livekit_signaling.store.encoding import decode_decisions, decode_entry, encode_decisions, encode_entry
from livekit_signaling.store.indexes import RoomIndex
from livekit_signaling.store.keys import keys_for
from livekit_signaling.store.replication import ReplicationGuard
from livekit_signaling.store.target import RedisTarget

T = TypeVar("T")

log = logging.getLogger(__name__)

#: Hash fields of a room besides its participants' (a participant id cannot contain ``.``).
_VERSION_FIELD = ".v"
_DECISIONS_FIELD = ".d"
#: The write stamp of the replication guard (see service/livekit_signaling/store/replication.py).
_STAMP_FIELD = ".w"
#: Set on a room's hash just before the hash is deleted (never seen by a read).
_DELETED_FIELD = ".x"

# Every write of a room, in one atomic step: a compare-and-set on the room's version (the fence that
# keeps two replicas from interleaving writes while a partition changes hands), then the part written
# (the decisions, or one participant's entry: set, or removed when empty), the write's stamp for the
# replication guard (when replicas are required), the idle expiry of the whole room, and, with one
# Redis (KEYS[2] given), the index of restricted rooms (a sorted set scored by expiry, so that expired
# rooms drop out of counts: set or removed with the decisions, and otherwise only kept in step with the
# key's expiry). In a cluster the index is in another slot than the room, so the store writes it after
# the script (store/indexes.py) and the script touches only the room's hash. Returns the new version, or
# 0 when fenced. Nothing in it reads or writes more than one entry.
_WRITE_SCRIPT = """
local stored = redis.call('HGET', KEYS[1], '.v')
if (stored or '0') ~= ARGV[1] then return 0 end
local version = tonumber(ARGV[1]) + 1
redis.call('HSET', KEYS[1], '.v', version)
if ARGV[8] ~= '' then redis.call('HSET', KEYS[1], '.w', ARGV[8]) end
if ARGV[5] == 'decisions' then
  redis.call('HSET', KEYS[1], '.d', ARGV[6])
  if KEYS[2] and ARGV[7] == '1' then
    redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
  elseif KEYS[2] then
    redis.call('ZREM', KEYS[2], ARGV[4])
  end
else
  if ARGV[7] == '' then
    redis.call('HDEL', KEYS[1], ARGV[6])
  else
    redis.call('HSET', KEYS[1], ARGV[6], ARGV[7])
  end
  if KEYS[2] then redis.call('ZADD', KEYS[2], 'XX', ARGV[3], ARGV[4]) end
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return version
"""


class RedisStateStore:
    """Keys (names in store/keys.py, hash-tagged by room in a cluster): a room's hash (version ``.v``,
    encoded decisions ``.d``, write stamp ``.w``, and one field per participant holding its encoded
    roster entry; the whole room expires when idle), the index of rooms with microphone restrictions,
    one mark per processed command (the duplicate-suppression window), the probe replication barriers
    write.

    With ``min_replicas`` > 0, room writes and deletions count only once that many replicas hold them,
    and a read of a room not known to be replicated waits until it is (``ReplicationGuard``)."""

    def __init__(
        self,
        target: RedisTarget | str,
        *,
        prefix: str,
        dedup_window_seconds: float,
        room_idle_seconds: float,
        timeout_seconds: float = 2.0,
        min_replicas: int = 0,
        wait_timeout_seconds: float = 1.0,
    ) -> None:
        target = RedisTarget(url=target) if isinstance(target, str) else target
        # A reply may take as long as the WAIT it answers, on top of the ordinary bound.
        self._connection = RedisConnection(
            target, timeout_seconds=timeout_seconds + (wait_timeout_seconds if min_replicas else 0)
        )
        self._redis = self._connection.client
        self.keys = keys_for(target, prefix)
        self._dedup_window = max(1, int(dedup_window_seconds))
        self._room_idle = max(1, int(room_idle_seconds))
        self._replication = ReplicationGuard(min_replicas=min_replicas, timeout_seconds=wait_timeout_seconds)
        #: The restricted-rooms index, when the room's script cannot write it (a cluster).
        self._restricted_index = (
            None
            if self.keys.indexes_in_room_script
            else RoomIndex(self.keys.restricted, room_idle_seconds=self._room_idle)
        )

    async def _call(self, operation: Callable[[], Awaitable[T]]) -> T:
        try:
            async with self._connection.slots:  # one connection per operation, first come first served
                return await operation()
        except StoreUnavailable as error:  # a write that too few replicas acknowledged
            await self._connection.after_error(error)
            raise
        except (RedisError, RedisClusterException, OSError) as error:
            if not is_transient(error):
                raise
            await self._connection.after_error(error)
            raise StoreUnavailable(f"Redis: {failure_text(error)}") from error

    async def _on(self, key: str, queue: Callable[[AnyPipeline], object]) -> list[Any]:
        """The replies to the commands ``queue`` adds, all on ``key``, sent to the master that holds it
        (in a cluster: following a reshard, which redis-py's own routing does not for ``ASK``)."""
        return await self._call(lambda: self._connection.pipeline(key, queue))

    async def load(self, room: str, participants: Collection[str] | None = None) -> RoomState:
        key = self.keys.room(room)
        if participants is None:
            fields: dict[bytes, bytes]
            (fields,) = await self._on(key, lambda pipe: pipe.hgetall(key))
            version = fields.pop(_VERSION_FIELD.encode(), None)
            decisions = fields.pop(_DECISIONS_FIELD.encode(), None)
            stamp = fields.pop(_STAMP_FIELD.encode(), None)
            entries = {name.decode(): decode_entry(data) for name, data in fields.items()}
        else:
            names = list(participants)
            values: list[bytes | None]
            (values,) = await self._on(
                key, lambda pipe: pipe.hmget(key, [_VERSION_FIELD, _DECISIONS_FIELD, _STAMP_FIELD, *names])
            )
            version, decisions, stamp = values[0], values[1], values[2]
            entries = {
                name: decode_entry(data)
                for name, data in zip(names, values[3:], strict=True)
                if data is not None
            }
        await self._call(
            lambda: self._replication.confirm_read(
                self._connection, room, stamp.decode() if stamp else None, probe_key=self.keys.probe(room)
            )
        )
        return RoomState(
            version=int(version) if version is not None else 0,
            decisions=decode_decisions(decisions) if decisions is not None else RoomDecisions(),
            participants=entries,
        )

    async def save_entry(self, room: str, state: RoomState, participant: str) -> None:
        entry = state.participants.get(participant)
        await self._write(
            room, state, "entry", participant, encode_entry(entry) if entry is not None else b""
        )

    async def save_decisions(self, room: str, state: RoomState) -> None:
        restricted = state.decisions.microphone_restrictions is not None
        await self._write(
            room, state, "decisions", encode_decisions(state.decisions), b"1" if restricted else b"0"
        )

    async def _write(self, room: str, state: RoomState, part: str, *values: str | bytes) -> None:
        """The one write path of room state: one script call (fence, part, stamp, expiry, index) and,
        with replicas required, its ``WAIT`` in the same pipeline."""
        stamp = self._replication.new_stamp() if self._replication.enabled else ""
        args: list[str | bytes | int | float] = [
            str(state.version),
            self._room_idle,
            time.time() + self._room_idle,
            room,
            part,
            *values,
            stamp,
        ]
        # EVAL rather than EVALSHA: a master promoted by a fail-over has no scripts loaded, and Redis
        # caches the compiled script by its hash anyway.
        key = self.keys.room(room)
        index = [self.keys.restricted] if self._restricted_index is None else []
        version: Any
        (version,) = await self._call(
            lambda: self._replication.write(
                self._connection,
                key,
                lambda pipe: pipe.eval(_WRITE_SCRIPT, 1 + len(index), key, *index, *args),
            )
        )
        if not version:
            raise StaleState(f"room {room}: another writer saved since version {state.version}")
        state.version = int(version)
        self._replication.confirmed(room, stamp)
        restricted = state.decisions.microphone_restrictions is not None
        if self._restricted_index is not None and self._restricted_index.due(
            room, restricted, changed=part == "decisions"
        ):
            await self._index(room, listed=restricted)

    async def _index(self, room: str, *, listed: bool) -> None:
        """Write ``room``'s entry in the restricted-rooms index after the room's own write (a cluster).
        A transient failure does not fail the command, whose state is written: the entry is redone
        with the room's next write (store/indexes.py)."""
        index = self._restricted_index
        assert index is not None
        try:
            if listed:
                await self._on(index.key, lambda pipe: pipe.zadd(index.key, {room: index.score()}))
            else:
                await self._on(index.key, lambda pipe: pipe.zrem(index.key, room))
        except StoreUnavailable as error:
            index.failed(room)
            log.warning("restricted-rooms index not updated for room %s: %s", room, error)
        else:
            index.written(room, listed)

    async def delete(self, room: str) -> None:
        # Not a MULTI (WAIT has to follow the writes outside it); both commands are idempotent, the
        # room's later commands wait for this one, and a retry repeats both.
        key = self.keys.room(room)

        def delete_both(pipe: AnyPipeline) -> None:
            # The room's key is written before it goes, so that the deletion is a write (for WAIT) also
            # when the key was gone already; one key, so that no migration in a cluster splits them.
            pipe.hset(key, _DELETED_FIELD, b"1")
            pipe.delete(key)
            if self._restricted_index is None:
                pipe.zrem(self.keys.restricted, room)

        self._replication.forget(room)
        await self._call(lambda: self._replication.write(self._connection, key, delete_both))
        if self._restricted_index is not None:
            await self._index(room, listed=False)

    async def is_processed(self, message_id: str) -> bool:
        key = self.keys.processed(message_id)
        (count,) = await self._on(key, lambda pipe: pipe.exists(key))
        return bool(count)

    async def mark_processed(self, message_id: str) -> None:
        key = self.keys.processed(message_id)
        await self._on(key, lambda pipe: pipe.set(key, b"1", ex=self._dedup_window))

    async def count_restricted_rooms(self) -> int:
        key = self.keys.restricted
        (count,) = await self._on(key, lambda pipe: pipe.zcount(key, time.time(), "+inf"))
        return int(count)

    async def ping(self) -> None:
        await self._call(self._redis.ping)

    async def close(self) -> None:
        await self._connection.close()


class RedisReplicaRegistry:
    """The live replicas, for sharing partitions fairly: a sorted set of replica ids scored by the
    time their registration expires, refreshed by each replica's heartbeat."""

    def __init__(self, store: RedisStateStore, *, ttl_seconds: float) -> None:
        self._store = store
        self._key = store.keys.replicas
        self._ttl = ttl_seconds

    async def heartbeat(self, replica: str) -> list[str]:
        """Refresh our registration; the replicas alive now, in a stable order."""
        now = time.time()

        def refresh(pipe: AnyPipeline) -> None:
            pipe.zadd(self._key, {replica: now + self._ttl})
            pipe.zremrangebyscore(self._key, "-inf", now)
            pipe.zrange(self._key, 0, -1)

        *_, members = await self._store._on(self._key, refresh)
        return sorted(member.decode() for member in members)

    async def leave(self, replica: str) -> None:
        await self._store._on(self._key, lambda pipe: pipe.zrem(self._key, replica))
