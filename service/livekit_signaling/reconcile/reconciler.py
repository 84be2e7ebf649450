"""Every interval, each room this replica is responsible for is checked against LiveKit and repaired.

Which rooms: those on the reconcile lists of the partitions this replica holds (``held_partitions``).
A room's writes put it on the list of the partition its commands arrive on, while it has standing
decisions and for a token's lifetime after they were lifted; single-active-consumer makes exactly one
replica hold a partition, so exactly one replica checks a room.

In what order: a room's check runs as a job of the room's command order (``in_room_order``: the
pipeline's per-room serializer), between two of its commands, as the webhook re-check does, and counts
as running on its partition, so a hand-over of the partition waits for it. A repair therefore never
overtakes a later moderator decision: a decision that arrives while a check is in flight runs after it,
and applies itself to what the check left.

At what cost: the rooms of a pass are spread evenly over the interval, with at most ``rooms_in_flight``
checked at once (a share of the LiveKit adapter's own bound, which every call also passes), so the
LiveKit calls per second are the rooms divided by the interval, without bursts. A room is checked again
one interval (at most two, when rooms come and go) after its last check, so a difference is repaired
within two intervals while passes keep up; ``reconcile_pass_duration_seconds`` shows when they do not.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection
from typing import Literal, Protocol

from livekit_signaling.domain.deadline import command_deadline
from livekit_signaling.domain.errors import LiveKitRejected, LiveKitUnavailable, StoreUnavailable
from livekit_signaling.reconcile.recent import RecentRepairs
from livekit_signaling.reconcile.room_check import RoomCheck
from livekit_signaling.telemetry.logging import command_context
from livekit_signaling.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

Job = Callable[[], Awaitable[None]]
#: ``in_line``, ``repaired``, ``gone`` (see ``RoomCheck``); ``failed``: LiveKit or the store did not
#: answer (the room is checked again next pass); ``not_held``: its partition moved to another replica
#: before its turn came.
CheckOutcome = Literal["in_line", "repaired", "gone", "failed", "not_held"]


class ReconcileList(Protocol):
    async def rooms_to_reconcile(self, partitions: Collection[int]) -> list[tuple[str, int]]: ...


class Checker(Protocol):
    """Compares one room with LiveKit and repairs it (``RoomChecker``)."""

    async def check(self, room: str) -> RoomCheck: ...


class Reconciler:
    def __init__(
        self,
        *,
        checker: Checker,
        rooms: ReconcileList,
        held_partitions: Callable[[], Collection[int]],
        in_room_order: Callable[[str, int, Job], None],
        interval_seconds: float,
        rooms_in_flight: int,
        deadline_seconds: float,
        metrics: Metrics,
        recent: RecentRepairs,
    ) -> None:
        self._checker = checker
        self._rooms = rooms
        self._held_partitions = held_partitions
        self._in_room_order = in_room_order
        self._interval = interval_seconds
        self._rooms_in_flight = rooms_in_flight
        self._deadline = deadline_seconds
        self._metrics = metrics
        self.recent = recent

    async def run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.run_pass()
            except Exception:  # a bug: the next pass must still come
                log.exception("reconcile pass failed")
            await asyncio.sleep(max(0.0, started + self._interval - time.monotonic()))

    async def run_pass(self) -> Counter[CheckOutcome]:
        """Check every room of the held partitions once, spread over the interval; how the checks
        ended."""
        started = time.monotonic()
        outcomes: Counter[CheckOutcome] = Counter()
        held = self._held_partitions()
        try:
            rooms = sorted(await self._rooms.rooms_to_reconcile(held)) if held else []
        except StoreUnavailable as error:
            log.warning("reconcile pass skipped: the state store is unavailable (%s)", error)
            return outcomes
        self._metrics.reconcile_rooms.set(len(rooms))
        if not rooms:
            return outcomes
        spacing = self._interval / len(rooms)
        slots = asyncio.Semaphore(self._rooms_in_flight)
        checks: list[asyncio.Task[CheckOutcome]] = []

        async def check(room: str, partition: int) -> CheckOutcome:
            try:
                return await self.check_in_room_order(room, partition)
            finally:
                slots.release()

        for number, (room, partition) in enumerate(rooms):
            await asyncio.sleep(max(0.0, started + number * spacing - time.monotonic()))
            await slots.acquire()
            checks.append(asyncio.create_task(check(room, partition), name=f"reconcile:{room}"))
        outcomes.update(await asyncio.gather(*checks))
        self._metrics.reconcile_pass_duration.observe(time.monotonic() - started)
        if outcomes["failed"]:
            log.warning(
                "reconcile pass: %d of %d rooms could not be checked; they are checked again next pass",
                outcomes["failed"],
                len(rooms),
            )
        return outcomes

    async def check_in_room_order(self, room: str, partition: int) -> CheckOutcome:
        """Check one room as a job of its command order, if its partition is still held when its turn
        comes."""
        done: asyncio.Future[CheckOutcome] = asyncio.get_running_loop().create_future()

        async def job() -> None:
            outcome: CheckOutcome = "failed"
            try:
                outcome = await self._check(room, partition)
            finally:
                self._metrics.reconcile_rooms_checked.labels(outcome).inc()
                if not done.done():
                    done.set_result(outcome)

        self._in_room_order(room, partition, job)
        return await asyncio.shield(done)

    async def _check(self, room: str, partition: int) -> CheckOutcome:
        if partition not in self._held_partitions():
            return "not_held"
        with command_context(room=room, action="reconcile"):
            try:
                with command_deadline(self._deadline):
                    result = await self._checker.check(room)
            except (LiveKitUnavailable, LiveKitRejected, StoreUnavailable) as error:
                log.debug("room not reconciled: %s", error)
                return "failed"
            self._record(room, result)
        return result.outcome

    def _record(self, room: str, result: RoomCheck) -> None:
        if not result.repairs:
            return
        kinds: Counter[str] = Counter()
        for repair in result.repairs:
            kinds.update(repair.drift)
        for kind, count in kinds.items():
            self._metrics.reconcile_repairs.labels(kind).inc(count)
        self.recent.record(room, result.repairs)
        log.info(
            "reconciled with LiveKit: %d of %d identities repaired (%s)",
            len(result.repairs),
            result.connected,
            ", ".join(f"{kind} {count}" for kind, count in sorted(kinds.items())),
        )
