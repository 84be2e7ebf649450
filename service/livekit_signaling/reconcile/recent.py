"""The latest repairs of each room, in memory and bounded, for people to read (the dev console)."""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass

from livekit_signaling.domain.reconciliation import Drift, Repair

#: Repairs kept per room, and rooms kept (the least recently repaired are forgotten first).
REPAIRS_PER_ROOM = 20
ROOMS_KEPT = 1_000


@dataclass(frozen=True, slots=True)
class RecordedRepair:
    #: Wall-clock time of the check that made it.
    at: float
    identity: str
    drift: tuple[Drift, ...]
    #: The sources it was given (sorted), or None when it was disconnected.
    sources: tuple[str, ...] | None


class RecentRepairs:
    def __init__(self, *, per_room: int = REPAIRS_PER_ROOM, rooms: int = ROOMS_KEPT) -> None:
        self._per_room = per_room
        self._rooms_kept = rooms
        self._rooms: OrderedDict[str, deque[RecordedRepair]] = OrderedDict()

    def record(self, room: str, repairs: list[Repair]) -> None:
        if not repairs:
            return
        now = time.time()
        kept = self._rooms.get(room)
        if kept is None:
            kept = self._rooms[room] = deque(maxlen=self._per_room)
        self._rooms.move_to_end(room)
        for repair in repairs:
            sources = None if repair.sources is None else tuple(sorted(repair.sources))
            kept.append(RecordedRepair(now, repair.participant.identity, repair.drift, sources))
        while len(self._rooms) > self._rooms_kept:
            self._rooms.popitem(last=False)

    def of(self, room: str) -> list[RecordedRepair]:
        """Oldest first."""
        return list(self._rooms.get(room, ()))
