"""State in process memory: the default for one replica and for ``dev``."""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Collection

from livekit_signaling.domain.errors import StaleState
from livekit_signaling.domain.reconciliation import has_standing_decisions
from livekit_signaling.domain.state import RoomState, RosterEntry
from livekit_signaling.store.encoding import decode_decisions, encode_decisions

_NO_DECISIONS = encode_decisions(RoomState().decisions)


class _Room:
    """One room: its version, its decisions (encoded, so every load hands out a fresh copy), and its
    roster, one entry per participant, so that a participant's command touches only its own."""

    __slots__ = ("decisions", "roster", "touched", "version")

    def __init__(self) -> None:
        self.touched = 0.0
        self.version = 0
        self.decisions = _NO_DECISIONS
        self.roster: dict[str, RosterEntry] = {}


class MemoryStateStore:
    """Keeps each room's parts, plus a time-ordered window of processed message ids.

    Rooms idle for longer than ``room_idle_seconds`` are forgotten (checked on writes), as the Redis
    store lets its keys expire. The reconcile lists hold, per partition, the rooms with something to
    enforce and until when (monotonic time), as the Redis store's sorted sets do.
    """

    def __init__(
        self, *, dedup_window_seconds: float, room_idle_seconds: float, lift_grace_seconds: float = 0.0
    ) -> None:
        self._rooms: OrderedDict[str, _Room] = OrderedDict()
        #: Processed message ids with when they may be forgotten, and the same ids in buckets of 100 ms
        #: by that time, oldest first. The ids of one bucket share one expiry object, so an id costs
        #: about 45 bytes beside its string (W6), where an ordered dict and a float of its own take 124.
        self._processed: dict[str, float] = {}
        self._expiring: deque[tuple[float, list[str]]] = deque()
        self._restricted: set[str] = set()
        self._to_reconcile: dict[int, dict[str, float]] = {}
        self._lift_grace = lift_grace_seconds
        #: Roster entries are immutable: the few distinct ones without popouts (role x kind) are
        #: shared by every participant who has them, so an entry costs the roster only its slot.
        self._entries: dict[RosterEntry, RosterEntry] = {}
        self._dedup_window = dedup_window_seconds
        self._room_idle = room_idle_seconds

    async def load(self, room: str, participants: Collection[str] | None = None) -> RoomState:
        stored = self._rooms.get(room)
        if stored is None:
            return RoomState()
        roster = stored.roster
        return RoomState(
            version=stored.version,
            decisions=decode_decisions(stored.decisions),
            participants=(
                dict(roster)
                if participants is None
                else {name: roster[name] for name in participants if name in roster}
            ),
        )

    async def save_entry(
        self, room: str, state: RoomState, participant: str, *, partition: int | None = None
    ) -> None:
        stored = self._fenced(room, state)
        entry = state.participants.get(participant)
        if entry is None:
            stored.roster.pop(participant, None)
        else:
            if not entry.popouts:
                entry = self._entries.setdefault(entry, entry)
            stored.roster[participant] = entry
        self._written(room, stored, state)
        if partition is not None and has_standing_decisions(state.decisions):
            self._to_reconcile.setdefault(partition, {})[room] = stored.touched + self._room_idle

    async def save_decisions(self, room: str, state: RoomState, *, partition: int | None = None) -> None:
        stored = self._fenced(room, state)
        stored.decisions = encode_decisions(state.decisions)
        if state.decisions.microphone_restrictions is None:
            self._restricted.discard(room)
        else:
            self._restricted.add(room)
        self._written(room, stored, state)
        if partition is not None:
            lasts = self._room_idle if has_standing_decisions(state.decisions) else self._lift_grace
            self._to_reconcile.setdefault(partition, {})[room] = stored.touched + lasts

    def _fenced(self, room: str, state: RoomState) -> _Room:
        stored = self._rooms.get(room)
        stored_version = stored.version if stored is not None else 0
        if stored_version != state.version:
            raise StaleState(f"room {room}: stored version {stored_version}, written {state.version}")
        if stored is None:
            stored = self._rooms[room] = _Room()
        return stored

    def _written(self, room: str, stored: _Room, state: RoomState) -> None:
        stored.version += 1
        state.version = stored.version
        now = time.monotonic()
        stored.touched = now
        self._rooms.move_to_end(room)
        self._expire_rooms(now)

    async def delete(self, room: str, *, partition: int | None = None) -> None:
        self._rooms.pop(room, None)
        self._restricted.discard(room)
        if partition is not None:
            self._to_reconcile.get(partition, {}).pop(room, None)

    async def rooms_to_reconcile(self, partitions: Collection[int]) -> list[tuple[str, int]]:
        now = time.monotonic()
        rooms = []
        for partition in partitions:
            listed = self._to_reconcile.get(partition, {})
            for room, until in list(listed.items()):
                if until > now:
                    rooms.append((room, partition))
                else:
                    del listed[room]
        return rooms

    def _expire_rooms(self, now: float) -> None:
        while self._rooms:
            oldest, stored = next(iter(self._rooms.items()))
            if now - stored.touched < self._room_idle:
                return
            del self._rooms[oldest]
            self._restricted.discard(oldest)

    async def is_processed(self, message_id: str) -> bool:
        expires = self._processed.get(message_id)
        return expires is not None and expires > time.monotonic()

    async def load_unless_processed(
        self, message_id: str, room: str, participants: Collection[str]
    ) -> RoomState | None:
        if await self.is_processed(message_id):
            return None
        return await self.load(room, participants)

    async def mark_processed(self, message_id: str) -> None:
        now = time.monotonic()
        # Rounded up: an id is remembered for at least the window, at most 100 ms longer.
        expires = math.ceil((now + self._dedup_window) * 10) / 10
        if not self._expiring or self._expiring[-1][0] != expires:
            self._expiring.append((expires, []))
        bucket_expires, bucket = self._expiring[-1]
        bucket.append(message_id)
        self._processed[message_id] = bucket_expires
        while self._expiring and self._expiring[0][0] <= now:
            expired, ids = self._expiring.popleft()
            for old in ids:
                if self._processed.get(old) == expired:  # not marked again since
                    del self._processed[old]

    async def count_restricted_rooms(self) -> int:
        return len(self._restricted)

    async def close(self) -> None:
        """Nothing to release."""
