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

import argparse
import asyncio
import json
import uuid
from typing import Any

from bench.harness import RESULTS
from bench.redis_rounds import latest, service_round, store_round, table
from livekit_signaling.store.redis import RedisStateStore
from testkit.processes import EmulatorProcess
from testkit.redis_sentinel import RedisSentinelGroup

SETTINGS = ("0", "1")


def _store(group: RedisSentinelGroup, min_replicas: int) -> RedisStateStore:
    return RedisStateStore(
        group.target(),
        prefix=f"bench-wait-{uuid.uuid4().hex[:8]}",
        dedup_window_seconds=60,
        room_idle_seconds=600,
        min_replicas=min_replicas,
    )


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--commands", type=int, default=5000, help="state writes per throughput round")
    parser.add_argument("--rate", type=float, default=50.0, help="commands/s of the latency round")
    parser.add_argument("--store-ops", type=int, default=3000, help="load+save cycles per store round")
    args = parser.parse_args()
    results: dict[str, dict[str, list[dict[str, Any]]]] = {
        "store": {label: [] for label in SETTINGS},
        "service": {label: [] for label in SETTINGS},
    }
    emulator = EmulatorProcess()
    try:
        with RedisSentinelGroup() as group:
            for round_number in range(args.rounds):
                stores = {label: _store(group, int(label)) for label in SETTINGS}
                try:
                    for label, figures in (await store_round(stores, args.store_ops)).items():
                        results["store"][label].append(figures)
                finally:
                    for store in stores.values():
                        await store.close()
                for label in SETTINGS if round_number % 2 == 0 else reversed(SETTINGS):
                    env = group.service_env(REDIS_MIN_REPLICAS=label)
                    service = await service_round(env, f"wait{label}", emulator.url, args.commands, args.rate)
                    results["service"][label].append(service)
                print(f"round {round_number + 1}: {latest(results)}", flush=True)
    finally:
        emulator.stop()

    print(f"\nmedian of {args.rounds} rounds; REDIS_MIN_REPLICAS 0 | 1 | ratio 1/0")
    print("\n".join(table(results, SETTINGS, rate=args.rate)))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "redis-wait.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
