"""State in Redis, shared by every replica (``REDIS_URL``, or ``REDIS_SENTINELS``)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.exceptions import RedisError

from service.domain.errors import StaleState, StoreUnavailable
from service.domain.state import RoomState
from service.store.connection import RedisConnection, RedisTarget, is_transient
from service.store.encoding import decode_state, encode_state
from service.store.replication import ReplicationGuard

T = TypeVar("T")

# Compare-and-set of a room's state on its version, in one atomic step: the fence that keeps two
# replicas from interleaving writes while a partition changes hands. It also refreshes the idle expiry
# and the index of restricted rooms (a sorted set scored by expiry, so expired rooms drop out of counts),
# and stamps the write for the replication guard (``w``, see service/store/replication.py).
_SAVE_SCRIPT = """
local stored = redis.call('HGET', KEYS[1], 'v')
if (stored or '0') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 's', ARGV[3], 'w', ARGV[8])
redis.call('EXPIRE', KEYS[1], ARGV[4])
if ARGV[5] == '1' then
  redis.call('ZADD', KEYS[2], ARGV[6], ARGV[7])
else
  redis.call('ZREM', KEYS[2], ARGV[7])
end
return 1
"""


class RedisStateStore:
    """Keys: ``<prefix>:room:<room>`` (hash: version ``v``, encoded state ``s``, write stamp ``w``;
    expires when idle), ``<prefix>:restricted`` (rooms with microphone restrictions),
    ``<prefix>:msg:<message id>`` (processed commands, for the duplicate-suppression window),
    ``<prefix>:replication-probe`` (written by replication barriers).

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
        self._prefix = prefix
        self._dedup_window = max(1, int(dedup_window_seconds))
        self._room_idle = max(1, int(room_idle_seconds))
        self._restricted_key = f"{prefix}:restricted"
        self._replication = ReplicationGuard(
            min_replicas=min_replicas,
            timeout_seconds=wait_timeout_seconds,
            probe_key=f"{prefix}:replication-probe",
        )

    def _room_key(self, room: str) -> str:
        return f"{self._prefix}:room:{room}"

    async def _call(self, operation: Callable[[], Awaitable[T]]) -> T:
        try:
            async with self._connection.slots:  # one connection per operation, first come first served
                return await operation()
        except StoreUnavailable as error:  # a write that too few replicas acknowledged
            await self._connection.after_error(error)
            raise
        except (RedisError, OSError) as error:
            if not is_transient(error):
                raise
            await self._connection.after_error(error)
            raise StoreUnavailable(f"Redis: {type(error).__name__}") from error

    async def load(self, room: str) -> RoomState:
        key = self._room_key(room)
        fields: list[Any] = await self._call(lambda: self._redis.hmget(key, ["s", "w"]))
        data: bytes | None = fields[0]
        stamp: bytes | None = fields[1]
        await self._call(
            lambda: self._replication.confirm_read(self._redis, room, stamp.decode() if stamp else None)
        )
        return decode_state(data) if data is not None else RoomState()

    async def save(self, room: str, state: RoomState) -> None:
        expected = state.version
        state.version += 1
        restricted = state.microphone_restrictions is not None
        stamp = self._replication.new_stamp()
        args: list[str | bytes | int | float] = [
            str(expected),
            str(state.version),
            encode_state(state),
            self._room_idle,
            "1" if restricted else "0",
            time.time() + self._room_idle,
            room,
            stamp,
        ]
        # EVAL rather than EVALSHA: a master promoted by a fail-over has no scripts loaded, and Redis
        # caches the compiled script by its hash anyway.
        saved: Any
        (saved,) = await self._call(
            lambda: self._replication.write(
                self._redis,
                lambda pipe: pipe.eval(_SAVE_SCRIPT, 2, self._room_key(room), self._restricted_key, *args),
            )
        )
        if saved != 1:
            state.version = expected
            raise StaleState(f"room {room}: another writer saved since version {expected}")
        self._replication.confirmed(room, stamp)

    async def delete(self, room: str) -> None:
        # Not a MULTI (WAIT has to follow the writes outside it); both commands are idempotent, the
        # room's later commands wait for this one, and a retry repeats both.
        def delete_both(pipe: Any) -> None:
            pipe.delete(self._room_key(room))
            pipe.zrem(self._restricted_key, room)

        self._replication.forget(room)
        await self._call(lambda: self._replication.write(self._redis, delete_both, probe=True))

    async def is_processed(self, message_id: str) -> bool:
        count: int = await self._call(lambda: self._redis.exists(f"{self._prefix}:msg:{message_id}"))
        return count > 0

    async def mark_processed(self, message_id: str) -> None:
        await self._call(
            lambda: self._redis.set(f"{self._prefix}:msg:{message_id}", b"1", ex=self._dedup_window)
        )

    async def count_restricted_rooms(self) -> int:
        count: int = await self._call(lambda: self._redis.zcount(self._restricted_key, time.time(), "+inf"))
        return count

    async def ping(self) -> None:
        await self._call(self._redis.ping)

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

        return sorted(member.decode() for member in await self._store._call(refresh))

    async def leave(self, replica: str) -> None:
        await self._store._call(lambda: self._store._redis.zrem(self._key, replica))
