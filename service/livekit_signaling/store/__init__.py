"""Room state: ``MemoryStateStore`` for one replica, ``RedisStateStore`` shared by several."""

from livekit_signaling.store.memory import MemoryStateStore
from livekit_signaling.store.redis import RedisStateStore

__all__ = ["MemoryStateStore", "RedisStateStore"]
