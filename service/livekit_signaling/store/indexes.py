"""An index of rooms that a room's own script cannot write: in a Redis Cluster the index is a key of its
own, in its own slot, while the script runs on the master of the room's slot (store/keys.py).

So the store writes the room's entry after the room's write, as one more command to whichever master
holds the index, and only when it matters: when the room's entry changes (``changed``: its decisions
were written), when this process has not written it yet, or when the entry's lifetime needs to be
extended (at most every quarter of ``ROOM_IDLE_SECONDS``). Each entry is scored by until when it counts
(the room's idle expiry), like the index one Redis keeps inside the script, so that rooms left to expire
drop out of counts.

Not atomic with the room's write, so the index may lag behind it: a failed index write is logged (the
command's state is written and confirmed: it goes on) and redone with the room's next write; a process
gone between the two leaves the room out until its next write, or counted until its entry expires.
The index serves a gauge, never a decision.
"""

from __future__ import annotations

import time
from collections import OrderedDict

#: Rooms whose index entry this process remembers writing; beyond that the least recently used are
#: forgotten (their next write writes the entry again).
REMEMBERED_ROOMS = 100_000
#: A remembered entry's state when its last write failed: the next write of the room redoes it.
_UNKNOWN = None


class RoomIndex:
    """A sorted set ``key`` of rooms, each scored by the time it stops counting."""

    def __init__(self, key: str, *, room_idle_seconds: float) -> None:
        self.key = key
        self._lifetime = room_idle_seconds
        self._refresh = room_idle_seconds / 4
        #: Per room: whether this process last wrote it listed, and when (monotonic); ``_UNKNOWN``
        #: after a failed write.
        self._written: OrderedDict[str, tuple[bool, float] | None] = OrderedDict()

    def due(self, room: str, listed: bool, *, changed: bool) -> bool:
        """Whether the write of ``room`` (``listed``: it belongs in the index) must write its entry."""
        if changed or (room in self._written and self._written[room] is _UNKNOWN):
            return True
        known = self._written.get(room)
        if listed:
            return known is None or not known[0] or time.monotonic() - known[1] > self._refresh
        return known is not None and known[0]

    def score(self) -> float:
        """An entry written now counts until then (wall clock, as Redis compares it)."""
        return time.time() + self._lifetime

    def written(self, room: str, listed: bool) -> None:
        self._remember(room, (listed, time.monotonic()))

    def failed(self, room: str) -> None:
        self._remember(room, _UNKNOWN)

    def _remember(self, room: str, state: tuple[bool, float] | None) -> None:
        self._written[room] = state
        self._written.move_to_end(room)
        if len(self._written) > REMEMBERED_ROOMS:
            self._written.popitem(last=False)
