"""The Redis client: one URL, the master of a Sentinel-monitored group (``REDIS_SENTINELS``), or a Redis
Cluster (``REDIS_CLUSTER_NODES``, store/cluster.py).

With Sentinel the client is redis-py's own ``Sentinel(...).master_for(name)``: its connection pool asks
the Sentinels for the master's address whenever it opens a connection, so after a fail-over every new
connection goes to the new master; a connection still open to the old one fails (the process is gone)
or, if the old master was demoted rather than lost, gets ``READONLY`` for a write, which redis-py turns
into a ``ConnectionError`` after closing that connection. The store treats both as transient
(``is_transient``): the command retries in place and its next attempt reaches the new master.

In a cluster, each key's commands go to the master of its slot, and a slot's move (``MOVED``, ``ASK``) is
followed (``pipeline``, store/cluster.py); after a failure that may mean a master is gone, the store
reads the slot map again (``after_error``), and a cluster that cannot serve a slot for the moment
(``CLUSTERDOWN``, ``TRYAGAIN``, a slot without a master) is transient too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

import redis.asyncio as redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import (
    ClusterError,
    MasterDownError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from livekit_signaling.store.cluster import TopologyRefresher, cluster_client, run_on_slot_owner
from livekit_signaling.store.target import RedisTarget

log = logging.getLogger(__name__)

#: Error replies that mean "this node cannot take the command now", not "the command is wrong": a demoted
#: master (READONLY, ``ReadOnlyError``), a replica cut off from its master (MASTERDOWN,
#: ``MasterDownError``), a master refusing writes for lack of replicas (NOREPLICAS, Redis's own
#: ``min-replicas-to-write``; redis-py has no class for it).
TRANSIENT_REPLIES = ("NOREPLICAS",)

#: A pipeline of the plain client or of the cluster client; the store queues the same commands on both.
AnyPipeline = Pipeline | ClusterPipeline


class _MasterPool(SentinelConnectionPool, BlockingConnectionPool):
    """redis-py's Sentinel pool, blocking when all its connections are busy (see ``RedisConnection``),
    logging when the master it connects to changes (a fail-over), and never handing out again a
    connection to a master that was replaced.

    When the pool learns of a new master it disconnects its idle connections, not those in use at that
    moment: they come back to the pool still connected to the old master, and the asyncio pool's
    ``release`` (unlike the synchronous pool's, which checks ``owns_connection``) keeps them. Later
    attempts would then write to a master that a partition cut off from its replicas, find no replica
    in their WAIT, and go on doing so until that master is demoted when the partition heals. So a
    connection to another address than the current master's is disconnected as it comes back: its
    next use connects to the current master."""

    async def release(self, connection: Any) -> None:
        current = self.master_address
        if current is not None and (connection.host, connection.port) != tuple(current):
            await connection.disconnect()
        await super().release(connection)

    async def get_master_address(self) -> Any:
        previous = self.master_address
        address = await super().get_master_address()  # type: ignore[no-untyped-call]
        if address != previous:
            host, port = address
            if previous is None:
                log.info("Redis master %r is %s:%s", self.service_name, host, port)
            else:
                log.warning("Redis master %r moved to %s:%s (fail-over)", self.service_name, host, port)
        return address


class RedisConnection:
    """The client of the master, and the Sentinel clients behind it (closed together); or the cluster
    client."""

    def __init__(self, target: RedisTarget, *, timeout_seconds: float, max_connections: int = 100) -> None:
        """``timeout_seconds`` bounds connecting, each reply (keep it above the longest command the
        caller sends, e.g. a ``WAIT``) and the wait for a free connection. redis-py's own retries are
        off: the command processor retries a failed state-store step itself, with backoff, and keeps the
        room's order.

        At most ``max_connections`` commands run at once: callers queue for ``slots`` (first come,
        first served) before they take a connection. redis-py's default pool raises
        ``MaxConnectionsError`` when its connections (100 by default) are all busy, and with more rooms
        at work at once (16 partitions x 32 prefetched commands) store calls failed and retried with
        backoff for nothing; its blocking pool waits, but a task that frees a connection and asks again
        at once takes it before the waiters, some of which then time out. Measured with 500 rooms
        writing at once (10,000 calls): 8,571 failed with the default pool, 90-246 with the blocking pool
        alone, none with the slots. The blocking pool stays as the bounded backstop."""
        self.target = target
        #: Taken around every command or pipeline (``RedisStateStore._call``).
        self.slots = asyncio.Semaphore(max_connections)
        common: dict[str, Any] = {
            "socket_timeout": timeout_seconds,
            "socket_connect_timeout": timeout_seconds,
            "retry": Retry(NoBackoff(), 0),
        }
        pool: dict[str, Any] = {"max_connections": max_connections, "timeout": timeout_seconds}
        self._sentinel: Sentinel | None = None
        self._topology: TopologyRefresher | None = None
        self.client: redis.Redis | RedisCluster
        self._batches: Batches | None = None
        if target.cluster_nodes:
            self.client = cluster_client(target, max_connections=max_connections, **common)
            self._topology = TopologyRefresher(self.client)
        elif target.url is not None:
            self.client = redis.Redis.from_pool(
                BlockingConnectionPool.from_url(
                    target.url,
                    username=target.username,
                    password=target.password,
                    **target.tls_kwargs,
                    **common,
                    **pool,
                )
            )
        else:
            self._sentinel = Sentinel(  # type: ignore[no-untyped-call]
                list(target.sentinels),
                sentinel_kwargs={
                    **common,
                    **target.tls_kwargs,
                    "username": target.sentinel_username,
                    "password": target.sentinel_password,
                },
                username=target.username,
                password=target.password,
                **target.tls_kwargs,
                **common,
            )
            self.client = self._sentinel.master_for(
                target.sentinel_master, connection_pool_class=_MasterPool, **pool
            )
        if isinstance(self.client, redis.Redis):
            self._batches = Batches(self.client, self.slots)

    async def pipeline(self, key: str, queue: Callable[[AnyPipeline], object]) -> list[Any]:
        """Run the commands ``queue`` adds to a pipeline on one connection to the master that holds
        ``key`` (the one master, or in a cluster the master of ``key``'s slot, redirections followed),
        so that a ``WAIT`` among them counts exactly the writes before it; their results."""
        if isinstance(self.client, RedisCluster):
            return await run_on_slot_owner(self.client, key, queue)
        async with self.client.pipeline(transaction=False) as pipe:
            queue(pipe)
            results: list[Any] = await pipe.execute()
            return results

    async def batched(self, key: str, queue: Callable[[AnyPipeline], object]) -> list[Any]:
        """As ``pipeline``, but with one Redis the commands of every caller in this turn of the event
        loop share one pipeline (``Batches``); in a cluster, ``pipeline``. Not for a ``WAIT``, which
        must count exactly its own writes. Takes its own ``slots``: callers must not hold one."""
        if self._batches is None:
            async with self.slots:
                return await self.pipeline(key, queue)
        return await self._batches.run(queue)

    async def pipelines(self, queues: Mapping[str, Callable[[AnyPipeline], object]]) -> dict[str, list[Any]]:
        """Per key, run the commands its queue adds on the master that holds the key; their results, by
        key. With one master, in one pipeline shared as ``batched`` does; in a cluster one per key, all
        at once. Takes its own ``slots``: callers must not hold one."""
        if isinstance(self.client, RedisCluster):
            client = self.client

            async def on_owner(key: str) -> list[Any]:
                async with self.slots:
                    return await run_on_slot_owner(client, key, queues[key])

            keys = list(queues)
            results = await asyncio.gather(*(on_owner(key) for key in keys))
            return dict(zip(keys, results, strict=True))
        spans: dict[str, tuple[int, int]] = {}

        def queue_all(pipe: AnyPipeline) -> None:
            for key, queue in queues.items():
                start = len(pipe)
                queue(pipe)
                spans[key] = (start - first, len(pipe) - first)

        first = 0

        def queue_from_here(pipe: AnyPipeline) -> None:
            nonlocal first
            first = len(pipe)
            queue_all(pipe)

        assert self._batches is not None
        replies = await self._batches.run(queue_from_here)
        return {key: replies[start:end] for key, (start, end) in spans.items()}

    async def after_error(self, error: BaseException) -> None:
        """After a transient failure, make sure the next attempt goes to the current master.

        redis-py's Sentinel pool asks the Sentinels only when it opens a connection, and a connection
        to a master that was replaced but still runs (a manual fail-over, or a partition that cut it
        off from the Sentinels) stays open until Sentinel demotes it, some 10 s later (after a
        partition, once it heals); meanwhile writes land on the old master, which WAIT reveals (it has
        no replicas left) but does not end. So ask the Sentinels now: if the master moved, the pool
        closes its idle connections, and those in use as they come back (``_MasterPool``). A plain
        client keeps its connections to a master that was demoted behind the same address (a managed
        Redis that fails over by moving a DNS name): on READONLY, drop the idle ones. In a cluster,
        after a failure of Redis itself (not a ``WAIT`` that fell short: a master that lost its
        replicas, or its majority, stops taking writes or moves its slots, which the store meets and
        follows), read the slot map again: a master may be gone and its replica promoted."""
        if self._topology is not None:
            if isinstance(error, RedisError | RedisClusterException | OSError):
                with contextlib.suppress(RedisError, RedisClusterException, OSError):
                    await self._topology.refresh()
            return
        assert isinstance(self.client, redis.Redis)
        pool = self.client.connection_pool
        if isinstance(pool, SentinelConnectionPool):
            with contextlib.suppress(RedisError, OSError):
                await pool.get_master_address()  # type: ignore[no-untyped-call]
        elif isinstance(error, ReadOnlyError):
            await pool.disconnect(inuse_connections=False)

    async def close(self) -> None:
        await self.client.aclose()
        if self._sentinel is not None:
            await self._sentinel.aclose()


class Batches:
    """Round trips shared by commands: what callers queue in one turn of the event loop goes to Redis as
    one pipeline, and each caller gets the replies of its own commands (or the error of the first that
    failed, or the pipeline's). With hundreds of commands in flight, a command's reads and its processed
    mark cost a share of a round trip instead of one each: redis-py spends about as much CPU on a
    pipeline of one command as on one of ten."""

    __slots__ = ("_client", "_pending", "_slots")

    def __init__(self, client: redis.Redis, slots: asyncio.Semaphore) -> None:
        self._client = client
        self._slots = slots
        self._pending: list[tuple[Callable[[AnyPipeline], object], asyncio.Future[list[Any]]]] = []

    async def run(self, queue: Callable[[AnyPipeline], object]) -> list[Any]:
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._pending.append((queue, future))
        if len(self._pending) == 1:
            asyncio.get_running_loop().call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.ensure_future(self._execute(batch))
        task.add_done_callback(_read_outcome)

    async def _execute(
        self, batch: list[tuple[Callable[[AnyPipeline], object], asyncio.Future[list[Any]]]]
    ) -> None:
        spans: list[tuple[int, int]] = []
        try:
            async with self._slots, self._client.pipeline(transaction=False) as pipe:
                for queue, _ in batch:
                    start = len(pipe)
                    queue(pipe)
                    spans.append((start, len(pipe)))
                replies: list[Any] = await pipe.execute(raise_on_error=False)
        except BaseException as error:  # the round trip failed: every caller's, each retries on its own
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            if not isinstance(error, Exception):
                raise
            return
        for (start, end), (_, future) in zip(spans, batch, strict=True):
            if future.done():  # its caller was cancelled
                continue
            own = replies[start:end]
            failed = next((reply for reply in own if isinstance(reply, Exception)), None)
            if failed is not None:
                future.set_exception(failed)
            else:
                future.set_result(own)


def _read_outcome(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()  # delivered to the callers already


def failure_text(error: BaseException) -> str:
    """What went wrong, for a log line (redis-py's messages name the address, never a password), with
    the fix where a retry cannot help: a server certificate the service does not accept."""
    text = f"{type(error).__name__}: {error}"
    if "CERTIFICATE_VERIFY_FAILED" in text:
        text += (
            "; fix: REDIS_TLS_CA (or ssl_ca_certs in a rediss:// REDIS_URL) must be the CA that signed the "
            "Redis certificate, and the certificate must name the host the service connects to"
        )
    return text


def is_transient(error: BaseException) -> bool:
    """Redis cannot serve us right now, but will (or another node will) once it recovers or fails over.

    In a cluster: ``CLUSTERDOWN`` (``ClusterDownError``, a ``ClusterError``, as is redis-py's "TTL
    exhausted" after too many redirections), ``TRYAGAIN`` (``TryAgainError``: a multi-key command during
    a slot's migration), a slot no master serves yet (``SlotNotCoveredError``), and no seed node
    reachable (a ``RedisClusterException`` caused by a connection error). ``MOVED`` and ``ASK`` never
    get here: they are followed."""
    if isinstance(
        error,
        RedisConnectionError
        | RedisTimeoutError
        | OSError
        | ReadOnlyError
        | MasterDownError
        | ClusterError
        | TryAgainError
        | SlotNotCoveredError,
    ):
        return True
    if isinstance(error, RedisClusterException):
        return is_transient(error.__cause__) if error.__cause__ is not None else False
    return isinstance(error, ResponseError) and str(error).startswith(TRANSIENT_REPLIES)
