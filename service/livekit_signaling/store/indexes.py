"""The indexes of rooms that a room's own script cannot write: in a Redis Cluster each is a key of its own,
in its own slot, while the script runs on the master of the room's slot (store/keys.py). They are the
restricted rooms (for a gauge) and, per partition, the rooms with something to enforce (for the
reconciler): sorted sets of rooms, each scored by until when it counts.

So the store writes a room's entries after the room's write, one more command to whichever master
holds each index, and only when it matters: when the room's decisions were written (the entry may
change), when this process has not written the entry yet, or when its lifetime needs extending (at most
every quarter of ``ROOM_IDLE_SECONDS``). One Redis writes the same entries inside the script, on every
write.

Not atomic with the room's write, so an index may lag behind it: a failed index write is logged (the
command's state is written and confirmed: it goes on) and tried again with the store's next index write
or reconcile pass, which every replica makes once per reconcile interval; a process gone between the
two leaves the room out until its next write, or listed until its entry expires. A lagging restricted
index makes the gauge off by a room; a lagging reconcile list delays the room's reconciliation, as the
reconciler allows for.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

from livekit_signaling.domain.reconciliation import has_standing_decisions
from livekit_signaling.domain.state import RoomDecisions
from livekit_signaling.store.keys import RedisKeys

#: Rooms whose index entries this process remembers writing; beyond that the least recently used are
#: forgotten (their next write writes the entries again).
REMEMBERED_ROOMS = 100_000


class RoomIndex:
    """What this process last wrote of each room's entry in one family of indexes: listed or not, and
    when (monotonic); ``None`` after a failed write, so that the next write of the room redoes it."""

    def __init__(self, *, refresh_seconds: float) -> None:
        self._refresh = refresh_seconds
        self._written: OrderedDict[str, tuple[bool, float] | None] = OrderedDict()

    def due(self, room: str, listed: bool, *, changed: bool) -> bool:
        """Whether a write of ``room`` (``listed``: it belongs on the index) must write its entry."""
        if changed or (room in self._written and self._written[room] is None):
            return True
        known = self._written.get(room)
        if listed:
            return known is None or not known[0] or time.monotonic() - known[1] > self._refresh
        return known is not None and known[0]

    def written(self, room: str, listed: bool) -> None:
        self._remember(room, (listed, time.monotonic()))

    def failed(self, room: str) -> None:
        self._remember(room, None)

    def _remember(self, room: str, state: tuple[bool, float] | None) -> None:
        self._written[room] = state
        self._written.move_to_end(room)
        if len(self._written) > REMEMBERED_ROOMS:
            self._written.popitem(last=False)


@dataclass(frozen=True)
class IndexUpdate:
    """One room's entry in one index: listed ``until`` (wall clock, as Redis compares it), or taken off
    it (``None``)."""

    index: RoomIndex
    key: str
    room: str
    until: float | None
    #: Whether the entry belongs on the index (a lifted room stays on its reconcile list for a grace).
    listed: bool


class IndexesAfterWrites:
    """The entries a room's write or deletion implies in the indexes that span rooms, and those whose
    write failed, to be tried again."""

    def __init__(self, keys: RedisKeys, *, room_idle_seconds: float, lift_grace_seconds: float) -> None:
        self._keys = keys
        self._room_idle = room_idle_seconds
        self._lift_grace = lift_grace_seconds
        self._restricted = RoomIndex(refresh_seconds=room_idle_seconds / 4)
        self._reconcile = RoomIndex(refresh_seconds=room_idle_seconds / 4)
        #: Failed updates by (index key, room), the latest of each; oldest first.
        self._pending: OrderedDict[tuple[str, str], IndexUpdate] = OrderedDict()

    def with_pending(self, updates: list[IndexUpdate]) -> list[IndexUpdate]:
        """``updates`` and the failed ones they do not replace, which are taken out of the pending."""
        for update in updates:
            self._pending.pop((update.key, update.room), None)
        retried = list(self._pending.values())
        self._pending.clear()
        return [*retried, *updates]

    def written(self, update: IndexUpdate) -> None:
        update.index.written(update.room, update.listed)

    def failed(self, update: IndexUpdate) -> None:
        update.index.failed(update.room)
        self._pending[(update.key, update.room)] = update
        if len(self._pending) > REMEMBERED_ROOMS:
            self._pending.popitem(last=False)

    def after_write(
        self, room: str, decisions: RoomDecisions, *, decisions_written: bool, partition: int | None
    ) -> list[IndexUpdate]:
        """The entries to write after ``room``'s write (its decisions as written; ``partition``: the
        partition of the command that wrote, None for a write that names none)."""
        now = time.time()
        updates = []
        restricted = decisions.microphone_restrictions is not None
        if self._restricted.due(room, restricted, changed=decisions_written):
            until = now + self._room_idle if restricted else None
            updates.append(IndexUpdate(self._restricted, self._keys.restricted, room, until, restricted))
        standing = has_standing_decisions(decisions)
        if (
            partition is not None
            and (standing or decisions_written)
            and self._reconcile.due(room, standing, changed=decisions_written)
        ):
            until = now + (self._room_idle if standing else self._lift_grace)
            key = self._keys.reconcile(partition)
            updates.append(IndexUpdate(self._reconcile, key, room, until, standing))
        return updates

    def after_delete(self, room: str, *, partition: int | None) -> list[IndexUpdate]:
        updates = [IndexUpdate(self._restricted, self._keys.restricted, room, None, False)]
        if partition is not None:
            updates.append(IndexUpdate(self._reconcile, self._keys.reconcile(partition), room, None, False))
        return updates
