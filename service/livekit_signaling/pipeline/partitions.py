"""Giving partitions back (to another replica, or at shutdown) without reordering them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

log = logging.getLogger(__name__)


class _Running:
    """``PartitionGate.running``: a class rather than a ``@contextmanager`` generator, since every
    command enters it."""

    __slots__ = ("_gate", "_partition")

    def __init__(self, gate: PartitionGate, partition: int) -> None:
        self._gate = gate
        self._partition = partition

    def __enter__(self) -> None:
        self._gate._started(self._partition)

    def __exit__(self, *_: object) -> None:
        self._gate._ended(self._partition)


class PartitionGate:
    """Counts the commands running per partition, and holds a partition's commands that have not
    started while it is being released."""

    def __init__(self) -> None:
        self._running: dict[int, int] = {}
        self._idle_waiters: dict[int, asyncio.Future[None]] = {}
        self._paused: dict[int, asyncio.Event] = {}

    async def wait_open(self, partition: int) -> None:
        """Until the partition is not being released (at once in the common case)."""
        pause = self._paused.get(partition)
        if pause is not None:
            await pause.wait()

    def running(self, partition: int) -> _Running:
        """Around a command that has started."""
        return _Running(self, partition)

    def _started(self, partition: int) -> None:
        self._running[partition] = self._running.get(partition, 0) + 1

    def _ended(self, partition: int) -> None:
        self._running[partition] -= 1
        if not self._running[partition]:
            waiter = self._idle_waiters.pop(partition, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    @contextlib.asynccontextmanager
    async def closing(self, partitions: list[int], grace_seconds: float) -> AsyncIterator[None]:
        """Hold the partitions' commands that have not started, let the started ones finish (up to
        ``grace_seconds``), then run the body (which closes the partitions' channels, so the broker
        takes back everything unacknowledged in queue order); the held commands then see that they
        are no longer ours and end without running."""
        for partition in partitions:
            self._paused.setdefault(partition, asyncio.Event())
        try:
            try:
                async with asyncio.timeout(grace_seconds):
                    for partition in partitions:
                        while self._running.get(partition):
                            waiter = self._idle_waiters.setdefault(
                                partition, asyncio.get_running_loop().create_future()
                            )
                            await asyncio.shield(waiter)
            except TimeoutError:
                log.warning("grace period over with commands running; the broker will redeliver them")
            yield
        finally:
            for partition in partitions:
                gate = self._paused.pop(partition, None)
                if gate is not None:
                    gate.set()
