"""State in Redis, shared by every replica (``REDIS_URL``, or ``REDIS_SENTINELS``)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any, TypeVar

from redis.exceptions import RedisError

from livekit_signaling.domain.errors import StaleState, StoreUnavailable
from livekit_signaling.domain.reconciliation import has_standing_decisions
from livekit_signaling.domain.state import RoomDecisions, RoomState
from livekit_signaling.store.connection import RedisConnection, failure_text, is_transient
from livekit_signaling.store.encoding import decode_decisions, decode_entry, encode_decisions, encode_entry
from livekit_signaling.store.replication import ReplicationGuard
from livekit_signaling.store.target import RedisTarget
from livekit_signaling.telemetry.tracing import NO_TRACING, Tracing

T = TypeVar("T")

#: Hash fields of a room besides its participants' (a participant id cannot contain ``.``).
_VERSION_FIELD = ".v"
_DECISIONS_FIELD = ".d"
#: The write stamp of the replication guard (see service/livekit_signaling/store/replication.py).
_STAMP_FIELD = ".w"

# Every write of a room, in one atomic step: a compare-and-set on the room's version (the fence that
# keeps two replicas from interleaving writes while a partition changes hands), then the part written
# (the decisions, or one participant's entry: set, or removed when empty), the write's stamp for the
# replication guard (when replicas are required), the idle expiry of the whole room, and the index of
# restricted rooms (a sorted set scored by expiry, so that expired rooms drop out of counts: set or
# removed with the decisions, and otherwise only kept in step with the key's expiry), and, when the
# write names its partition and the room has something to enforce (KEYS[3]: that partition's reconcile
# list), the room on that list: until the room expires while its decisions stand (ARGV[9] 'standing'),
# until the lift grace (ARGV[10]) once they were lifted. Returns
# the new version, or 0 when fenced. Nothing in it reads or writes more than one entry.
_WRITE_SCRIPT = """
local stored = redis.call('HGET', KEYS[1], '.v')
if (stored or '0') ~= ARGV[1] then return 0 end
local version = tonumber(ARGV[1]) + 1
redis.call('HSET', KEYS[1], '.v', version)
if ARGV[8] ~= '' then redis.call('HSET', KEYS[1], '.w', ARGV[8]) end
if ARGV[5] == 'decisions' then
  redis.call('HSET', KEYS[1], '.d', ARGV[6])
  if ARGV[7] == '1' then
    redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
  else
    redis.call('ZREM', KEYS[2], ARGV[4])
  end
else
  if ARGV[7] == '' then
    redis.call('HDEL', KEYS[1], ARGV[6])
  else
    redis.call('HSET', KEYS[1], ARGV[6], ARGV[7])
  end
  redis.call('ZADD', KEYS[2], 'XX', ARGV[3], ARGV[4])
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
    """Keys: ``<prefix>:room:<room>`` (a hash: version ``.v``, encoded decisions ``.d``, write stamp
    ``.w``, and one field per participant holding its encoded roster entry; the whole room expires when
    idle), ``<prefix>:restricted`` (rooms with microphone restrictions),
    ``<prefix>:reconcile:<partitions>:<partition>`` (per partition, the rooms with something to enforce,
    scored by until when), ``<prefix>:msg:<message id>`` (processed commands, for the
    duplicate-suppression window), ``<prefix>:replication-probe`` (written by replication barriers).

    The reconcile lists are the only keys besides ``restricted`` that span rooms. Each has its own hash
    slot (no hash tag): one sorted set per partition, holding only that partition's rooms with standing
    decisions (a few thousand at 100,000 participants), read by one replica once per reconcile interval
    and written by the room writes that already touch the room. Their updates are idempotent (ZADD of a
    score), so a Redis Cluster store can issue them after the room's own write instead of inside its
    script; a list that lags only delays a room's reconciliation until its next write. The partition
    count is in the key: after ``SIGNALING_PARTITIONS`` changes, rooms move to the new count's lists
    with their next write, and the old lists expire.

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
        self._prefix = prefix
        self._dedup_window = max(1, int(dedup_window_seconds))
        self._room_idle = max(1, int(room_idle_seconds))
        self._restricted_key = f"{prefix}:restricted"
        self._reconcile_prefix = f"{prefix}:reconcile:{partitions}:"
        self._lift_grace = lift_grace_seconds
        self._replication = ReplicationGuard(
            min_replicas=min_replicas,
            timeout_seconds=wait_timeout_seconds,
            probe_key=f"{prefix}:replication-probe",
        )

    def _room_key(self, room: str) -> str:
        return f"{self._prefix}:room:{room}"

    async def _call(self, name: str, operation: Callable[[], Awaitable[T]]) -> T:
        """One round trip (a command, or a pipeline named after what it does), traced as ``name``."""
        try:
            with self._tracing.store_call(name):
                async with self._connection.slots:  # one connection per operation, first come first served
                    return await operation()
        except StoreUnavailable as error:  # a write that too few replicas acknowledged
            await self._connection.after_error(error)
            raise
        except (RedisError, OSError) as error:
            if not is_transient(error):
                raise
            await self._connection.after_error(error)
            raise StoreUnavailable(f"Redis: {failure_text(error)}") from error

    async def load(self, room: str, participants: Collection[str] | None = None) -> RoomState:
        key = self._room_key(room)
        if participants is None:
            fields: dict[bytes, bytes] = await self._call("HGETALL", lambda: self._redis.hgetall(key))  # type: ignore[arg-type,return-value]
            version = fields.pop(_VERSION_FIELD.encode(), None)
            decisions = fields.pop(_DECISIONS_FIELD.encode(), None)
            stamp = fields.pop(_STAMP_FIELD.encode(), None)
            entries = {name.decode(): decode_entry(data) for name, data in fields.items()}
        else:
            names = list(participants)
            values: list[bytes | None] = await self._call(
                "HMGET",
                lambda: self._redis.hmget(key, [_VERSION_FIELD, _DECISIONS_FIELD, _STAMP_FIELD, *names]),  # type: ignore[arg-type,return-value]
            )
            version, decisions, stamp = values[0], values[1], values[2]
            entries = {
                name: decode_entry(data)
                for name, data in zip(names, values[3:], strict=True)
                if data is not None
            }
        read_stamp = stamp.decode() if stamp else None
        if self._replication.needs_barrier(room, read_stamp):
            await self._call("WAIT", lambda: self._replication.confirm_read(self._redis, room, read_stamp))
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

    def _reconcile_key(self, partition: int) -> str:
        return f"{self._reconcile_prefix}{partition}"

    async def _write(
        self,
        room: str,
        state: RoomState,
        part: str,
        *values: str | bytes,
        partition: int | None,
        reconcile: str,
    ) -> None:
        """The one write path of room state: one script call (fence, part, stamp, expiry, indexes) and,
        with replicas required, its ``WAIT`` in the same pipeline."""
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
        keys = [self._room_key(room), self._restricted_key]
        if partition is not None and reconcile:
            keys.append(self._reconcile_key(partition))
        # EVAL rather than EVALSHA: a master promoted by a fail-over has no scripts loaded, and Redis
        # caches the compiled script by its hash anyway.
        version: Any
        (version,) = await self._call(
            "EVAL",
            lambda: self._replication.write(
                self._redis, lambda pipe: pipe.eval(_WRITE_SCRIPT, len(keys), *keys, *args)
            ),
        )
        if not version:
            raise StaleState(f"room {room}: another writer saved since version {state.version}")
        state.version = int(version)
        self._replication.confirmed(room, stamp)

    async def delete(self, room: str, *, partition: int | None = None) -> None:
        # Not a MULTI (WAIT has to follow the writes outside it); the commands are idempotent, the
        # room's later commands wait for this one, and a retry repeats them.
        def delete_all(pipe: Any) -> None:
            pipe.delete(self._room_key(room))
            pipe.zrem(self._restricted_key, room)
            if partition is not None:
                pipe.zrem(self._reconcile_key(partition), room)

        self._replication.forget(room)
        await self._call("DEL", lambda: self._replication.write(self._redis, delete_all, probe=True))

    async def rooms_to_reconcile(self, partitions: Collection[int]) -> list[tuple[str, int]]:
        """One round trip: per partition, drop the rooms whose time is up and read the others."""
        ordered = sorted(partitions)
        if not ordered:
            return []

        async def read() -> list[Any]:
            now = time.time()
            async with self._redis.pipeline(transaction=False) as pipe:
                for partition in ordered:
                    key = self._reconcile_key(partition)
                    pipe.zremrangebyscore(key, "-inf", now)
                    pipe.zrangebyscore(key, now, "+inf")
                results: list[Any] = await pipe.execute()
                return results

        results = await self._call("ZRANGEBYSCORE", read)
        return [
            (room.decode(), partition)
            for partition, rooms in zip(ordered, results[1::2], strict=True)
            for room in rooms
        ]

    async def is_processed(self, message_id: str) -> bool:
        key = f"{self._prefix}:msg:{message_id}"
        count: int = await self._call("EXISTS", lambda: self._redis.exists(key))
        return count > 0

    async def mark_processed(self, message_id: str) -> None:
        await self._call(
            "SET", lambda: self._redis.set(f"{self._prefix}:msg:{message_id}", b"1", ex=self._dedup_window)
        )

    async def count_restricted_rooms(self) -> int:
        count: int = await self._call(
            "ZCOUNT", lambda: self._redis.zcount(self._restricted_key, time.time(), "+inf")
        )
        return count

    async def ping(self) -> None:
        await self._call("PING", self._redis.ping)

    async def close(self) -> None:
        await self._connection.close()


class RedisReplicaRegistry:
    """The live replicas, for sharing partitions fairly: a sorted set of replica ids scored by the
    time their registration expires, refreshed by each replica's heartbeat."""

    def __init__(self, store: RedisStateStore, *, ttl_seconds: float) -> None:
        self._store = store
        self._key = f"{store._prefix}:replicas"
        self._ttl = ttl_seconds

    async def heartbeat(self, replica: str) -> list[str]:
        """Refresh our registration; the replicas alive now, in a stable order."""

        async def refresh() -> list[bytes]:
            now = time.time()
            async with self._store._redis.pipeline(transaction=True) as pipe:
                pipe.zadd(self._key, {replica: now + self._ttl})
                pipe.zremrangebyscore(self._key, "-inf", now)
                pipe.zrange(self._key, 0, -1)
                results = await pipe.execute()
            members: list[bytes] = results[-1]
            return members

        return sorted(member.decode() for member in await self._store._call("ZADD", refresh))

    async def leave(self, replica: str) -> None:
        await self._store._call("ZREM", lambda: self._store._redis.zrem(self._key, replica))
