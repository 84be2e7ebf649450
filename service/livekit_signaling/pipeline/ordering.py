"""Per-key serial execution: jobs of one key run one after another in submission order, jobs of
different keys run concurrently.

aio-pika runs consumer callbacks concurrently, so a room's commands would otherwise overtake each other
(enable then disable restrictions could end enabled). Submission is synchronous, so callers that submit
before their first ``await`` keep delivery order.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

Job = Callable[[], Awaitable[None]]


class KeyedSerializer:
    __slots__ = ("_queues", "_workers")

    def __init__(self) -> None:
        self._queues: dict[str, deque[Job]] = {}
        self._workers: set[asyncio.Task[None]] = set()

    def submit(self, key: str, job: Job) -> None:
        queue = self._queues.get(key)
        if queue is not None:
            queue.append(job)
            return
        queue = self._queues[key] = deque((job,))
        worker = asyncio.create_task(self._drain(key, queue), name=f"room-worker:{key}")
        self._workers.add(worker)
        worker.add_done_callback(self._workers.discard)

    async def _drain(self, key: str, queue: deque[Job]) -> None:
        try:
            while queue:
                job = queue[0]
                try:
                    await job()
                except Exception:
                    # A job handles its own failures; this is a last line so one room's bug cannot
                    # stall the room forever.
                    log.exception("unhandled error in a job", extra={"room": key})
                queue.popleft()
        finally:
            del self._queues[key]

    @property
    def pending(self) -> int:
        return sum(len(queue) for queue in self._queues.values())

    async def wait_idle(self) -> None:
        """Until every submitted job has finished."""
        while self._workers:
            await asyncio.gather(*self._workers, return_exceptions=True)
