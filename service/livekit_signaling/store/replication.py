"""Acknowledged state is replicated state: a write counts once ``WAIT`` says enough replicas hold it.

Redis replicates asynchronously, so a write the master accepted can still be lost when the master dies
before its replicas have it, and Sentinel promotes one of them. Redis's answer is ``WAIT numreplicas
timeout``: it returns how many replicas acknowledged *the calling connection's* writes so far. Hence:

- A write path queues its commands and ``WAIT`` in **one pipeline** (``ReplicationGuard.write``), sent on
  one connection to the master that holds the room (``RedisConnection.pipeline``; in a cluster the
  master of the room's slot, whose replicas are the ones that count), so the ``WAIT`` counts exactly
  those writes. Fewer replicas than required raises ``ReplicationNotConfirmed``, a
  ``StoreUnavailable``: the command processor retries the step in place and publishes none of the
  command's events meanwhile.
- That write may still have reached the master. The retry re-runs the handler, which reads the written
  state, finds nothing left to change and would answer without anything having been confirmed. So a
  **read** confirms too (``ReplicationGuard.confirm_read``): every write stamps the room with a fresh
  random value; a read whose stamp is not one this process saw confirmed first runs a barrier, a probe
  write and ``WAIT`` on one connection. Replication is one ordered stream, so a replica that acknowledged
  the probe holds every earlier write, whichever connection or replica made it. (In a cluster each
  master has its own stream: the probe key is in the room's slot, so the barrier runs where the room
  is.) The stream is the barrier's master's, though, and the read may have come from a master that a
  fail-over replaced in between: so the barrier reads the room's stamp back in its own pipeline and
  confirms the read only if that master holds it (``ReadNotConfirmed`` otherwise: read again). A stamp
  (unlike a version number) never repeats, also not after a room was deleted and created again, so
  "confirmed" cannot be remembered for the wrong state. Reads of rooms this process wrote
  itself, the common case (one replica owns a partition), cost nothing extra.
- A ``WAIT`` without a write of its own on that connection proves nothing (it counts the replicas that
  acknowledged the connection's last write offset, 0: all of them), which is why the barrier writes a
  probe first, and a deletion writes the room's key before it deletes it (a ``DEL`` of a missing key
  writes nothing).

What is deliberately not waited for: duplicate-suppression marks and replica heartbeats (losing one in a
fail-over costs a repeated command whose events carry the same message ids, or one rebalancing round).
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from livekit_signaling.domain.errors import StoreUnavailable
from livekit_signaling.store.connection import AnyPipeline, RedisConnection

#: Rooms whose confirmed stamp is remembered; beyond that the least recently used are forgotten (their
#: next read runs a barrier).
REMEMBERED_ROOMS = 100_000


class ReplicationNotConfirmed(StoreUnavailable):
    """``WAIT`` returned before enough replicas acknowledged: the write may be on the master only."""


class ReadNotConfirmed(StoreUnavailable):
    """The master a read barrier ran on does not hold the state as it was read: the read came from a
    master that has been replaced since (a fail-over between the read and the barrier). Read again."""


class ReplicationGuard:
    """``min_replicas`` replicas must acknowledge within ``timeout_seconds`` (one ``WAIT``); 0 turns the
    guard into a pass-through. A read barrier writes a probe key the caller names, in the room's slot."""

    def __init__(self, *, min_replicas: int, timeout_seconds: float) -> None:
        self.min_replicas = min_replicas
        # WAIT's timeout is in milliseconds, and 0 would mean "block for ever".
        self._timeout_ms = max(1, round(timeout_seconds * 1000))
        self._confirmed: OrderedDict[str, str] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.min_replicas > 0

    @staticmethod
    def new_stamp() -> str:
        """A value no other write of any room will carry."""
        return secrets.token_hex(8)

    async def write(
        self, connection: RedisConnection, key: str, queue: Callable[[AnyPipeline], object]
    ) -> list[Any]:
        """Run the commands ``queue`` adds to a pipeline (they must write something) on the master that
        holds ``key``, then (enabled) ``WAIT``; the commands' results. Raises ``ReplicationNotConfirmed``
        when too few replicas acknowledged. Not enabled, the commands share a pipeline with others
        (``RedisConnection.batched``, which takes its connection slot itself: see ``takes_slot``);
        enabled, the ``WAIT`` must count exactly these writes, so they have a connection of their own."""
        if not self.enabled:
            return await connection.batched(key, queue)

        def queue_and_wait(pipe: AnyPipeline) -> None:
            queue(pipe)
            pipe.wait(self.min_replicas, self._timeout_ms)

        *results, acknowledged = await connection.pipeline(key, queue_and_wait)
        self._check(acknowledged)
        return results

    @property
    def takes_slot(self) -> bool:
        """Whether ``write`` takes its connection slot itself (the caller must not hold one then)."""
        return not self.enabled

    def needs_barrier(self, room: str, stamp: str | None) -> bool:
        """Whether a read of ``room`` carrying ``stamp`` (None when the room has none) must wait for a
        barrier: yes, unless the guard is off or this process saw that very stamp confirmed."""
        return self.enabled and (stamp is None or self._confirmed.get(room) != stamp)

    async def confirm_read(
        self,
        connection: RedisConnection,
        room: str,
        stamp: str | None,
        *,
        probe_key: str,
        stamp_at: tuple[str, str],
    ) -> None:
        """Before a read of ``room`` is acted on: the barrier (writing ``probe_key``, in the room's slot),
        if ``needs_barrier``. The barrier also reads the room's stamp back (``stamp_at``: the room's key
        and the stamp's field) in its own pipeline, so that it proves the state as read: a read served by
        an old master that a fail-over replaced, followed by a barrier on the new one, would otherwise
        "confirm" a write only the old master holds, which the heal then discards. A stamp that differs
        raises ``ReadNotConfirmed``."""
        if not self.needs_barrier(room, stamp):
            return
        room_key, stamp_field = stamp_at

        def stamp_then_probe(pipe: AnyPipeline) -> None:
            pipe.hget(room_key, stamp_field)
            pipe.set(probe_key, self.new_stamp(), px=60_000)

        held, _ = await self.write(connection, probe_key, stamp_then_probe)
        held_stamp = held.decode() if isinstance(held, bytes) else held
        if held_stamp != stamp:
            raise ReadNotConfirmed(
                f"room {room}: the master holds another state than the one read (a fail-over in between)"
            )
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

    def _check(self, acknowledged: int) -> None:
        if acknowledged < self.min_replicas:
            raise ReplicationNotConfirmed(
                f"{acknowledged} of {self.min_replicas} required replica(s) acknowledged within "
                f"{self._timeout_ms} ms"
            )
