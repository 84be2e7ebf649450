"""One replica of the service on a single Redis primary against the same on a Redis Cluster.

``.venv/bin/python -m bench.redis_cluster [--rounds N] [--commands N] [--rate R] [--store-ops N]
[--min-replicas N]``

Starts both, on loopback: a Sentinel-managed Redis (a master, two replicas, three Sentinels:
testkit/redis_sentinel.py) and a Redis Cluster (three masters with two replicas each:
testkit/redis_cluster.py), and runs the rounds of bench/redis_rounds.py against each, side by side
(the store's rounds in alternating batches, the service's rounds in alternating order), with the same
``REDIS_MIN_REPLICAS`` (default 1: a write counts once one replica of its shard holds it).

What it shows is the cost of the cluster's client side: the slot map, every room's commands pinned to
the master of its slot, the restricted-rooms index written after the room's own script. What it cannot
show on one machine is what the cluster is for: every node shares the same two cores, so three masters
serve no more than one here; across machines each master adds its own CPU, memory and network.

Prints a table; all figures in ``bench/results/redis-cluster.json``.
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
from livekit_signaling.store.target import RedisTarget
from testkit.processes import EmulatorProcess
from testkit.redis_cluster import RedisClusterGroup
from testkit.redis_sentinel import RedisSentinelGroup

SETUPS = ("single", "cluster")


def _store(target: RedisTarget, min_replicas: int) -> RedisStateStore:
    return RedisStateStore(
        target,
        prefix=f"bench-cluster-{uuid.uuid4().hex[:8]}",
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
    parser.add_argument("--min-replicas", type=int, default=1, help="REDIS_MIN_REPLICAS of both")
    args = parser.parse_args()
    results: dict[str, dict[str, list[dict[str, Any]]]] = {
        "store": {label: [] for label in SETUPS},
        "service": {label: [] for label in SETUPS},
    }
    emulator = EmulatorProcess()
    try:
        with RedisSentinelGroup(replicas=2) as single, RedisClusterGroup() as cluster:
            targets = {"single": single.target(), "cluster": cluster.target()}
            environments = {"single": single.service_env(), "cluster": cluster.service_env()}
            for round_number in range(args.rounds):
                stores = {label: _store(targets[label], args.min_replicas) for label in SETUPS}
                try:
                    for label, figures in (await store_round(stores, args.store_ops)).items():
                        results["store"][label].append(figures)
                finally:
                    for store in stores.values():
                        await store.close()
                for label in SETUPS if round_number % 2 == 0 else reversed(SETUPS):
                    env = {**environments[label], "REDIS_MIN_REPLICAS": str(args.min_replicas)}
                    service = await service_round(env, label, emulator.url, args.commands, args.rate)
                    results["service"][label].append(service)
                print(f"round {round_number + 1}: {latest(results)}", flush=True)
    finally:
        emulator.stop()

    print(
        f"\nmedian of {args.rounds} rounds, REDIS_MIN_REPLICAS={args.min_replicas}; "
        "single Redis | Redis Cluster | ratio cluster/single"
    )
    print("\n".join(table(results, SETUPS, rate=args.rate)))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "redis-cluster.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
