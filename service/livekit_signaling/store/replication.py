"""Acknowledged state is replicated state: a write counts once ``WAIT`` says enough replicas hold it.

Redis replicates asynchronously, so a write the master accepted can still be lost when the master dies
before its replicas have it, and Sentinel promotes one of them. Redis's answer is ``WAIT numreplicas
timeout``: it returns how many replicas acknowledged *the calling connection's* writes so far. Hence:

- A write path queues its commands and ``WAIT`` in **one pipeline** (``ReplicationGuard.write``): redis-py
  sends a pipeline on one connection, so the ``WAIT`` counts exactly those writes. Fewer replicas than
  required raises ``ReplicationNotConfirmed``, a ``StoreUnavailable``: the command processor retries the
  step in place and publishes none of the command's events meanwhile.
- That write may still have reached the master. The retry re-runs the handler, which reads the written
  state, finds nothing left to change and would answer without anything having been confirmed. So a
  **read** confirms too (``ReplicationGuard.confirm_read``): every write stamps the room with a fresh
  random value; a read whose stamp is not one this process saw confirmed first runs a barrier, a probe
  write and ``WAIT`` on one connection. Replication is one ordered stream, so a replica that acknowledged
  the probe holds every earlier write, whichever connection or replica made it. A stamp (unlike a
  version number) never repeats, also not after a room was deleted and created again, so "confirmed"
  cannot be remembered for the wrong state. Reads of rooms this process wrote itself, the common case
  (one replica owns a partition), cost nothing extra.
- A ``WAIT`` without a write of its own on that connection proves nothing (it counts the replicas that
  acknowledged the connection's last write offset, 0: all of them), which is why the barrier and
  deletions (whose ``DEL`` of a missing key writes nothing) write the probe first.

What is deliberately not waited for: duplicate-suppression marks and replica heartbeats (losing one in a
fail-over costs a repeated command whose events carry the same message ids, or one rebalancing round).
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import redis.asyncio as redis
from redis.asyncio.client import Pipeline

from livekit_signaling.domain.errors import StoreUnavailable

#: Rooms whose confirmed stamp is remembered; beyond that the least recently used are forgotten (their
#: next read runs a barrier).
REMEMBERED_ROOMS = 100_000


class ReplicationNotConfirmed(StoreUnavailable):
    """``WAIT`` returned before enough replicas acknowledged: the write may be on the master only."""


class ReplicationGuard:
    """``min_replicas`` replicas must acknowledge within ``timeout_seconds`` (one ``WAIT``); 0 turns the
    guard into a pass-through. ``probe_key`` is the key the barrier writes."""

    def __init__(self, *, min_replicas: int, timeout_seconds: float, probe_key: str) -> None:
        self.min_replicas = min_replicas
        # WAIT's timeout is in milliseconds, and 0 would mean "block for ever".
        self._timeout_ms = max(1, round(timeout_seconds * 1000))
        self._probe_key = probe_key
        self._confirmed: OrderedDict[str, str] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.min_replicas > 0

    @staticmethod
    def new_stamp() -> str:
        """A value no other write of any room will carry."""
        return secrets.token_hex(8)

    async def write(
        self, client: redis.Redis, queue: Callable[[Pipeline], object], *, probe: bool = False
    ) -> list[Any]:
        """Run the commands ``queue`` adds to a pipeline, then (enabled) ``WAIT``; the commands' results.

        ``probe``: the commands may write nothing (a ``DEL`` of a missing key), so write the probe too.
        Raises ``ReplicationNotConfirmed`` when too few replicas acknowledged."""
        async with client.pipeline(transaction=False) as pipe:
            queue(pipe)
            if not self.enabled:
                results: list[Any] = await pipe.execute()
                return results
            if probe:
                self._queue_probe(pipe)
            pipe.wait(self.min_replicas, self._timeout_ms)
            *results, acknowledged = await pipe.execute()
        if probe:
            results.pop()
        self._check(acknowledged)
        return results

    async def barrier(self, client: redis.Redis) -> None:
        """Return once ``min_replicas`` replicas hold every write the master has accepted so far."""
        await self.write(client, lambda pipe: None, probe=True)

    def needs_barrier(self, room: str, stamp: str | None) -> bool:
        """Whether a read of ``room`` carrying ``stamp`` (None when the room has none) must wait for a
        barrier: yes, unless the guard is off or this process saw that very stamp confirmed."""
        return self.enabled and (stamp is None or self._confirmed.get(room) != stamp)

    async def confirm_read(self, client: redis.Redis, room: str, stamp: str | None) -> None:
        """Before a read of ``room`` is acted on: the barrier, if ``needs_barrier``."""
        if not self.needs_barrier(room, stamp):
            return
        await self.barrier(client)
        if stamp is not None:
            self.confirmed(room, stamp)

    def confirmed(self, room: str, stamp: str) -> None:
        """The room's state carrying ``stamp`` is known to be on enough replicas."""
        if not self.enabled:
            return
        self._confirmed[room] = stamp
        self._confirmed.move_to_end(room)
        if len(self._confirmed) > REMEMBERED_ROOMS:
            self._confirmed.popitem(last=False)

    def forget(self, room: str) -> None:
        self._confirmed.pop(room, None)

    def _queue_probe(self, pipe: Pipeline) -> None:
        pipe.set(self._probe_key, self.new_stamp(), px=60_000)

    def _check(self, acknowledged: int) -> None:
        if acknowledged < self.min_replicas:
            raise ReplicationNotConfirmed(
                f"{acknowledged} of {self.min_replicas} required replica(s) acknowledged within "
                f"{self._timeout_ms} ms"
            )
