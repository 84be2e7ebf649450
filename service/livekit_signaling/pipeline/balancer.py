"""Fair sharing of partition queues between replicas.

Every replica subscribes to every partition; single-active-consumer makes one of them active per
partition (the first to subscribe) and keeps the others waiting, ready to take over at once when the
active one goes. Left alone, the first replica would stay active everywhere. So each replica regularly
compares the partitions it is active on (those that delivered to it since it subscribed) with its fair
share (``partitions / live replicas``, the remainder going to the first replicas by id), and hands the
surplus over: it cancels its consumer and subscribes again, so the longest-waiting consumer, another
replica's, becomes active. Live replicas are known from a registry in Redis (heartbeats); without Redis
there is one replica and nothing to balance.

The same rounds keep every partition consumed: a subscribed partition that has had no consumer of
ours for a whole interval while connected (the broker cancelled it because its queue was deleted, or
its channel closed and aio-pika, which restores consumers only after a reconnection, did not open it
again) is subscribed to again, which also declares its queue again. One interval first, so that a
channel aio-pika is still restoring is left to it.

Limits: a partition that carries no traffic is not known to be held, so it is balanced once traffic
arrives; after a replica dies, its partitions fail over at once, and the shares are recomputed when its
registration expires (two intervals). A hand-over keeps order: the releasing replica holds the
partition's commands that have not started, lets the started ones finish, then closes the partition's
channel, so the broker takes everything back in queue order before the next consumer sees any of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Protocol

from livekit_signaling.domain.errors import StoreUnavailable
from livekit_signaling.pipeline.ports import CommandTransport
from livekit_signaling.telemetry.metrics import Metrics

log = logging.getLogger(__name__)


class ReplicaRegistry(Protocol):
    async def heartbeat(self, replica: str) -> list[str]: ...

    async def leave(self, replica: str) -> None: ...


#: A registration lives this many balancing intervals without a heartbeat (``RedisReplicaRegistry``'s
#: TTL as the service configures it).
REGISTRATION_INTERVALS = 2


def replica_rank(replicas: list[str], replica: str) -> int:
    """This replica's place in the registry's order (last if the registry does not list it yet)."""
    return replicas.index(replica) if replica in replicas else max(0, len(replicas) - 1)


def fair_share(partitions: int, replicas: list[str], replica: str) -> int:
    """This replica's quota: ``partitions // n``, plus one for the first ``partitions % n`` replicas in
    the registry's order. The quotas add up to exactly ``partitions``, so no partition is passed around
    for ever while every replica sees the same membership."""
    count = max(1, len(replicas))
    return partitions // count + (1 if replica_rank(replicas, replica) < partitions % count else 0)


class PartitionBalancer:
    def __init__(
        self,
        *,
        transport: CommandTransport,
        hand_over: Callable[[int], Awaitable[None]],
        registry: ReplicaRegistry | None,
        replica: str,
        partitions: int,
        interval_seconds: float,
        metrics: Metrics,
    ) -> None:
        self._transport = transport
        self._hand_over = hand_over
        self._registry = registry
        self._replica = replica
        self._partitions = partitions
        self._interval = interval_seconds
        self._metrics = metrics
        self.replicas: list[str] = [replica]
        #: Since when the registry has listed no replica but this one (monotonic), or None.
        self._alone_since: float | None = None if registry is not None else time.monotonic()
        #: Partitions found without our consumer in the previous round.
        self._unconsumed: set[int] = set()

    async def run(self) -> None:
        while True:
            try:
                await self.step()
            except Exception as error:  # the broker went mid-round, say: the next round starts afresh
                # The type only: a broker's or store's message may name an address with its user.
                log.warning(
                    "partition round failed (%s); next in %.1fs", type(error).__name__, self._interval
                )
            await asyncio.sleep(self._interval)

    async def step(self) -> None:
        await self._resubscribe_unconsumed()
        if self._registry is not None:
            try:
                self.replicas = await self._registry.heartbeat(self._replica)
            except StoreUnavailable as error:
                log.warning("replica registry unavailable (%s); keeping partitions as they are", error)
                self._alone_since = None
                self._report()
                return
            if self.replicas != [self._replica]:
                self._alone_since = None
            elif self._alone_since is None:
                self._alone_since = time.monotonic()
        share = fair_share(self._partitions, self.replicas, self._replica)
        active = sorted(self._transport.active_partitions)
        surplus = len(active) - share
        if surplus > 0 and self._transport.is_connected:
            # Prefer giving away partitions that a round-robin layout would give to others, so that
            # replicas tend to settle on disjoint sets instead of passing the same ones around.
            rank = replica_rank(self.replicas, self._replica)
            ordered = sorted(active, key=lambda p: p % len(self.replicas) == rank)
            for partition in ordered[:surplus]:
                log.info(
                    "handing partition %d over (active on %d, fair share %d)", partition, len(active), share
                )
                await self._hand_over(partition)
        self._report()

    async def _resubscribe_unconsumed(self) -> None:
        unconsumed = set(await self._transport.partitions_not_consumed())
        for partition in sorted(unconsumed & self._unconsumed):
            log.warning(
                "partition %d has had no consumer of this replica for %.0fs while connected (cancelled by "
                "the broker, or its channel not restored): subscribing again",
                partition,
                self._interval,
            )
            self._metrics.partitions_resubscribed.inc()
            await self._hand_over(partition)
            unconsumed.discard(partition)
        self._unconsumed = unconsumed

    def held_partitions(self) -> Collection[int]:
        """The partitions this replica is known to hold: those it is the active consumer of, or every
        one while it is known to be the only replica. Without a registry (no Redis) there is one
        replica; with one, "only" means no other replica registered for a whole registration lifetime,
        which any live replica would have done. Nothing while disconnected: the partitions have moved.
        """
        if not self._transport.is_connected:
            return ()
        alone_since = self._alone_since
        lifetime = REGISTRATION_INTERVALS * self._interval if self._registry is not None else 0.0
        if alone_since is not None and time.monotonic() - alone_since >= lifetime:
            return range(self._partitions)
        return set(self._transport.active_partitions)

    def _report(self) -> None:
        active = self._transport.active_partitions
        self._metrics.partitions_active.set(len(active))
        for partition in range(self._partitions):
            self._metrics.partition_active.labels(str(partition)).set(1 if partition in active else 0)

    async def leave(self) -> None:
        if self._registry is not None:
            with contextlib.suppress(StoreUnavailable):
                await self._registry.leave(self._replica)
