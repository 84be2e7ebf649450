"""State in process memory: the default for one replica and for ``dev``."""

from __future__ import annotations

import time
from collections import OrderedDict

from service.domain.errors import StaleState
from service.domain.state import RoomState
from service.store.encoding import decode_state, encode_state


class MemoryStateStore:
    """Keeps each room's state encoded, plus a time-ordered window of processed message ids.

    Rooms idle for longer than ``room_idle_seconds`` are forgotten (checked on writes), as the Redis
    store lets its keys expire.
    """

    def __init__(self, *, dedup_window_seconds: float, room_idle_seconds: float) -> None:
        self._rooms: OrderedDict[str, tuple[float, int, bytes]] = OrderedDict()
        self._processed: OrderedDict[str, float] = OrderedDict()
        self._restricted: set[str] = set()
        self._dedup_window = dedup_window_seconds
        self._room_idle = room_idle_seconds

    async def load(self, room: str) -> RoomState:
        stored = self._rooms.get(room)
        return decode_state(stored[2]) if stored is not None else RoomState()

    async def save(self, room: str, state: RoomState) -> None:
        stored = self._rooms.get(room)
        stored_version = stored[1] if stored is not None else 0
        if stored_version != state.version:
            raise StaleState(f"room {room}: stored version {stored_version}, written {state.version}")
        state.version += 1
        now = time.monotonic()
        self._rooms[room] = (now, state.version, encode_state(state))
        self._rooms.move_to_end(room)
        if state.microphone_restrictions is None:
            self._restricted.discard(room)
        else:
            self._restricted.add(room)
        self._expire_rooms(now)

    async def delete(self, room: str) -> None:
        self._rooms.pop(room, None)
        self._restricted.discard(room)

    def _expire_rooms(self, now: float) -> None:
        while self._rooms:
            oldest, (touched, _, _) = next(iter(self._rooms.items()))
            if now - touched < self._room_idle:
                return
            del self._rooms[oldest]
            self._restricted.discard(oldest)

    async def is_processed(self, message_id: str) -> bool:
        expires = self._processed.get(message_id)
        return expires is not None and expires > time.monotonic()

    async def mark_processed(self, message_id: str) -> None:
        now = time.monotonic()
        self._processed[message_id] = now + self._dedup_window
        self._processed.move_to_end(message_id)
        while self._processed:
            oldest, expires = next(iter(self._processed.items()))
            if expires > now:
                break
            del self._processed[oldest]

    async def count_restricted_rooms(self) -> int:
        return len(self._restricted)

    async def close(self) -> None:
        """Nothing to release."""
