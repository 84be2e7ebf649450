"""State in Redis, shared by every replica (``REDIS_URL``, ``REDIS_SENTINELS`` or ``REDIS_CLUSTER_NODES``)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any, TypeVar

from redis.exceptions import RedisClusterException, RedisError

from livekit_signaling.domain.errors import StaleState, StoreUnavailable
from livekit_signaling.domain.reconciliation import has_standing_decisions
from livekit_signaling.domain.state import RoomDecisions, RoomState, RosterEntry
from livekit_signaling.store.connection import AnyPipeline, RedisConnection, failure_text, is_transient
from livekit_signaling.store.encoding import decode_decisions, decode_entry, encode_decisions, encode_entry
from livekit_signaling.store.indexes import IndexesAfterWrites, IndexUpdate
from livekit_signaling.store.keys import keys_for
from livekit_signaling.store.replication import ReplicationGuard
from livekit_signaling.store.target import RedisTarget
from livekit_signaling.telemetry.tracing import NO_TRACING, Tracing

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
# Redis, the indexes that span rooms: the restricted rooms (KEYS[2], a sorted set scored by expiry, so
# that expired rooms drop out of counts: set or removed with the decisions, and otherwise only kept in
# step with the key's expiry), and, when the write names its partition and the room has something to
# enforce (KEYS[3]: that partition's reconcile list), the room on that list: until the room expires
# while its decisions stand (ARGV[9] 'standing'), until the lift grace (ARGV[10]) once they were
# lifted. In a cluster those indexes are in other slots than the room, so the store writes them after
# the script (store/indexes.py) and the script touches only the room's hash. Returns the new version,
# or 0 when fenced. Nothing in it reads or writes more than one entry.
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
if KEYS[3] then
  if ARGV[9] == 'standing' then
    redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
  else
    redis.call('ZADD', KEYS[3], ARGV[10], ARGV[4])
  end
  redis.call('EXPIRE', KEYS[3], ARGV[2])
end
return version
"""


class RedisStateStore:
    """Keys (names and slots in store/keys.py; hash-tagged by room in a cluster): a room's hash (version
    ``.v``, encoded decisions ``.d``, write stamp ``.w``, and one field per participant holding its
    encoded roster entry; the whole room expires when idle), the index of rooms with microphone
    restrictions, per partition the rooms with something to enforce (reconcile lists, scored by until
    when), one mark per processed command (the duplicate-suppression window), the probe replication
    barriers write.

    The reconcile lists hold only their partition's rooms with standing decisions (a few thousand at
    100,000 participants), are read by one replica once per reconcile interval and written by the room
    writes that already touch the room. Their updates are idempotent (ZADD of a score), so in a cluster
    the store issues them after the room's own write; a list that lags only delays a room's
    reconciliation until its next write. The partition count is in the key: after
    ``SIGNALING_PARTITIONS`` changes, rooms move to the new count's lists with their next write, and
    the old lists expire.

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
        partitions: int = 1,
        lift_grace_seconds: float = 0.0,
        tracing: Tracing = NO_TRACING,
    ) -> None:
        target = RedisTarget(url=target) if isinstance(target, str) else target
        # A reply may take as long as the WAIT it answers, on top of the ordinary bound.
        self._connection = RedisConnection(
            target, timeout_seconds=timeout_seconds + (wait_timeout_seconds if min_replicas else 0)
        )
        self._redis = self._connection.client
        self._tracing = tracing
        self.keys = keys_for(target, prefix, partitions=partitions)
        self._dedup_window = max(1, int(dedup_window_seconds))
        self._room_idle = max(1, int(room_idle_seconds))
        self._lift_grace = lift_grace_seconds
        self._replication = ReplicationGuard(min_replicas=min_replicas, timeout_seconds=wait_timeout_seconds)
        #: What this process wrote to the indexes, when the room's script cannot write them (a cluster).
        self._indexes = (
            None
            if self.keys.indexes_in_room_script
            else IndexesAfterWrites(
                self.keys, room_idle_seconds=self._room_idle, lift_grace_seconds=lift_grace_seconds
            )
        )

    async def _call(self, name: str, operation: Callable[[], Awaitable[T]], *, slot: bool = True) -> T:
        """One round trip (a command, or a pipeline named after what it does), traced as ``name``.
        ``slot=False`` for an operation that takes its connection slot itself (``batched``)."""
        try:
            with self._tracing.store_call(name):
                if not slot:
                    return await operation()
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

    async def _on(self, name: str, key: str, queue: Callable[[AnyPipeline], object]) -> list[Any]:
        """The replies to the commands ``queue`` adds, all on ``key``, sent to the master that holds it
        (in a cluster: following a reshard, which redis-py's own routing does not for ``ASK``)."""
        return await self._call(name, lambda: self._connection.batched(key, queue), slot=False)

    async def load(self, room: str, participants: Collection[str] | None = None) -> RoomState:
        key = self.keys.room(room)
        if participants is None:
            fields: dict[bytes, bytes]
            (fields,) = await self._on("HGETALL", key, lambda pipe: pipe.hgetall(key))
            version = fields.pop(_VERSION_FIELD.encode(), None)
            decisions = fields.pop(_DECISIONS_FIELD.encode(), None)
            stamp = fields.pop(_STAMP_FIELD.encode(), None)
            entries = {name.decode(): decode_entry(data) for name, data in fields.items()}
        else:
            names = list(participants)
            values: list[bytes | None]
            (values,) = await self._on("HMGET", key, _read_entries(key, names))
            version, decisions, stamp, entries = _entries(names, values)
        return await self._loaded(room, version, decisions, stamp, entries)

    async def load_unless_processed(
        self, message_id: str, room: str, participants: Collection[str]
    ) -> RoomState | None:
        """``is_processed`` and ``load`` of those participants in one round trip (with one Redis; in a
        cluster the two keys' masters are asked at once)."""
        processed = self.keys.processed(message_id)
        key = self.keys.room(room)
        names = list(participants)

        def exists(pipe: AnyPipeline) -> None:
            pipe.exists(processed)

        replies = await self._call(
            "EXISTS HMGET",
            lambda: self._connection.pipelines({processed: exists, key: _read_entries(key, names)}),
            slot=False,
        )
        if replies[processed][0]:
            return None
        version, decisions, stamp, entries = _entries(names, replies[key][0])
        return await self._loaded(room, version, decisions, stamp, entries)

    async def _loaded(
        self,
        room: str,
        version: bytes | None,
        decisions: bytes | None,
        stamp: bytes | None,
        entries: dict[str, RosterEntry],
    ) -> RoomState:
        """The room as read, once the replication guard has it replicated."""
        read_stamp = stamp.decode() if stamp else None
        if self._replication.needs_barrier(room, read_stamp):
            await self._call(
                "WAIT",
                lambda: self._replication.confirm_read(
                    self._connection,
                    room,
                    read_stamp,
                    probe_key=self.keys.probe(room),
                    stamp_at=(self.keys.room(room), _STAMP_FIELD),
                ),
            )
        return RoomState(
            version=int(version) if version is not None else 0,
            decisions=decode_decisions(decisions) if decisions is not None else RoomDecisions(),
            participants=entries,
        )

    async def save_entry(
        self, room: str, state: RoomState, participant: str, *, partition: int | None = None
    ) -> None:
        entry = state.participants.get(participant)
        standing = partition is not None and has_standing_decisions(state.decisions)
        await self._write(
            room,
            state,
            "entry",
            participant,
            encode_entry(entry) if entry is not None else b"",
            partition=partition,
            reconcile="standing" if standing else "",
        )

    async def save_decisions(self, room: str, state: RoomState, *, partition: int | None = None) -> None:
        restricted = state.decisions.microphone_restrictions is not None
        await self._write(
            room,
            state,
            "decisions",
            encode_decisions(state.decisions),
            b"1" if restricted else b"0",
            partition=partition,
            reconcile="standing" if has_standing_decisions(state.decisions) else "lifted",
        )

    async def _write(
        self,
        room: str,
        state: RoomState,
        part: str,
        *values: str | bytes,
        partition: int | None,
        reconcile: str,
    ) -> None:
        """The one write path of room state: one script call (fence, part, stamp, expiry, and with one
        Redis the indexes) and, with replicas required, its ``WAIT`` in the same pipeline; in a cluster
        the indexes after it."""
        stamp = self._replication.new_stamp() if self._replication.enabled else ""
        now = time.time()
        args: list[str | bytes | int | float] = [
            str(state.version),
            self._room_idle,
            now + self._room_idle,
            room,
            part,
            *values,
            stamp,
            reconcile,
            now + self._lift_grace,
        ]
        key = self.keys.room(room)
        keys = [key]
        if self._indexes is None:
            keys.append(self.keys.restricted)
            if partition is not None and reconcile:
                keys.append(self.keys.reconcile(partition))
        # EVAL rather than EVALSHA: a master promoted by a fail-over has no scripts loaded, and Redis
        # caches the compiled script by its hash anyway.
        version: Any
        (version,) = await self._call(
            "EVAL",
            lambda: self._replication.write(
                self._connection, key, lambda pipe: pipe.eval(_WRITE_SCRIPT, len(keys), *keys, *args)
            ),
            slot=not self._replication.takes_slot,
        )
        if not version:
            raise StaleState(f"room {room}: another writer saved since version {state.version}")
        state.version = int(version)
        self._replication.confirmed(room, stamp)
        if self._indexes is not None:
            await self._write_indexes(
                self._indexes.after_write(
                    room, state.decisions, decisions_written=part == "decisions", partition=partition
                )
            )

    async def _write_indexes(self, updates: list[IndexUpdate]) -> None:
        """Write room entries in indexes after the rooms' own writes (a cluster), each on the master
        that holds its index, with those that failed before. A transient failure does not fail the
        command, whose state is written: the entry is tried again with the next (store/indexes.py)."""
        indexes = self._indexes
        assert indexes is not None

        async def write(update: IndexUpdate) -> None:
            def queue(pipe: AnyPipeline) -> None:
                if update.until is None:
                    pipe.zrem(update.key, update.room)
                else:
                    pipe.zadd(update.key, {update.room: update.until})
                pipe.expire(update.key, self._room_idle)

            try:
                await self._on("ZADD" if update.until is not None else "ZREM", update.key, queue)
            except StoreUnavailable as error:
                indexes.failed(update)
                log.warning("index %s not updated for room %s: %s", update.key, update.room, error)
            else:
                indexes.written(update)

        await asyncio.gather(*(write(update) for update in indexes.with_pending(updates)))

    async def delete(self, room: str, *, partition: int | None = None) -> None:
        # Not a MULTI (WAIT has to follow the writes outside it); the commands are idempotent, the
        # room's later commands wait for this one, and a retry repeats them.
        key = self.keys.room(room)

        def delete_all(pipe: AnyPipeline) -> None:
            # The room's key is written before it goes, so that the deletion is a write (for WAIT) also
            # when the key was gone already; one key, so that no migration in a cluster splits them.
            pipe.hset(key, _DELETED_FIELD, b"1")
            pipe.delete(key)
            if self._indexes is None:
                pipe.zrem(self.keys.restricted, room)
                if partition is not None:
                    pipe.zrem(self.keys.reconcile(partition), room)

        self._replication.forget(room)
        await self._call(
            "DEL",
            lambda: self._replication.write(self._connection, key, delete_all),
            slot=not self._replication.takes_slot,
        )
        if self._indexes is not None:
            await self._write_indexes(self._indexes.after_delete(room, partition=partition))

    async def rooms_to_reconcile(self, partitions: Collection[int]) -> list[tuple[str, int]]:
        """Per partition, drop the rooms whose time is up and read the others: one round trip with one
        Redis, one per list's master (at once) in a cluster."""
        ordered = sorted(partitions)
        if self._indexes is not None:
            await self._write_indexes([])  # what failed before, so that the lists are complete
        now = time.time()

        keys = {partition: self.keys.reconcile(partition) for partition in ordered}

        def queue_for(key: str) -> Callable[[AnyPipeline], object]:
            def queue(pipe: AnyPipeline) -> None:
                pipe.zremrangebyscore(key, "-inf", now)
                pipe.zrangebyscore(key, now, "+inf")

            return queue

        replies = await self._call(
            "ZRANGEBYSCORE",
            lambda: self._connection.pipelines({key: queue_for(key) for key in keys.values()}),
            slot=False,
        )
        return [(room.decode(), partition) for partition, key in keys.items() for room in replies[key][1]]

    async def is_processed(self, message_id: str) -> bool:
        key = self.keys.processed(message_id)
        (count,) = await self._on("EXISTS", key, lambda pipe: pipe.exists(key))
        return bool(count)

    async def mark_processed(self, message_id: str) -> None:
        key = self.keys.processed(message_id)
        await self._on("SET", key, lambda pipe: pipe.set(key, b"1", ex=self._dedup_window))

    async def count_restricted_rooms(self) -> int:
        key = self.keys.restricted
        (count,) = await self._on("ZCOUNT", key, lambda pipe: pipe.zcount(key, time.time(), "+inf"))
        return int(count)

    async def ping(self) -> None:
        await self._call("PING", self._redis.ping)

    async def close(self) -> None:
        await self._connection.close()


def _read_entries(key: str, names: list[str]) -> Callable[[AnyPipeline], object]:
    """The HMGET of a room's version, decisions, write stamp and these participants' entries."""
    return lambda pipe: pipe.hmget(key, [_VERSION_FIELD, _DECISIONS_FIELD, _STAMP_FIELD, *names])


def _entries(
    names: list[str], values: list[bytes | None]
) -> tuple[bytes | None, bytes | None, bytes | None, dict[str, RosterEntry]]:
    """``_read_entries``'s reply: version, decisions, stamp, and the entries that exist."""
    entries = {
        name: decode_entry(data) for name, data in zip(names, values[3:], strict=True) if data is not None
    }
    return values[0], values[1], values[2], entries


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

        *_, members = await self._store._on("ZADD", self._key, refresh)
        return sorted(member.decode() for member in members)

    async def leave(self, replica: str) -> None:
        await self._store._on("ZREM", self._key, lambda pipe: pipe.zrem(self._key, replica))
