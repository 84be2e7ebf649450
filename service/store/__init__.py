"""Room state: ``MemoryStateStore`` for one replica, ``RedisStateStore`` shared by several."""

from service.store.memory import MemoryStateStore
from service.store.redis import RedisStateStore

__all__ = ["MemoryStateStore", "RedisStateStore"]
