"""What "acknowledged state is replicated state" costs: ``REDIS_MIN_REPLICAS`` 0 against 1.

``.venv/bin/python -m bench.redis_wait [--rounds N] [--commands N] [--rate R] [--store-ops N]``

Starts a Sentinel-managed Redis (master, one replica, three Sentinels: testkit/redis_sentinel.py)
and measures, with 0 and 1 required replicas alternating round by round, on the same Redis, the rounds
of bench/redis_rounds.py: the store's work of a state-writing command (one room back to back, 32 rooms
at once) and the service process answering state-writing commands (as fast as confirmed, and at a fixed
rate).

Token refreshes and joins of known participants write nothing, so they cost nothing extra; the figures
are for the commands that write. Prints a table; all figures in ``bench/results/redis-wait.json``.
"""

from __future__ import annotations

import asyncio
import uuid

from bench.redis_rounds import Setup, arguments, compare, report
from livekit_signaling.store.redis import RedisStateStore
from testkit.redis_sentinel import RedisSentinelGroup


def _store(group: RedisSentinelGroup, min_replicas: int) -> RedisStateStore:
    return RedisStateStore(
        group.target(),
        prefix=f"bench-wait-{uuid.uuid4().hex[:8]}",
        dedup_window_seconds=60,
        room_idle_seconds=600,
        min_replicas=min_replicas,
    )


async def main() -> None:
    args = arguments(__doc__ or "").parse_args()
    with RedisSentinelGroup() as group:
        setups = {
            f"wait{replicas}": Setup(
                store=lambda replicas=replicas: _store(group, replicas),
                env=group.service_env(REDIS_MIN_REPLICAS=str(replicas)),
            )
            for replicas in (0, 1)
        }
        results = await compare(setups, args)
    report(results, args, title="REDIS_MIN_REPLICAS 0 | 1 | ratio 1/0", file_name="redis-wait.json")


if __name__ == "__main__":
    asyncio.run(main())
