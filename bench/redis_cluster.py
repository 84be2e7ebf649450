"""One replica of the service on a single Redis primary against the same on a Redis Cluster.

``.venv/bin/python -m bench.redis_cluster [--rounds N] [--commands N] [--rate R] [--store-ops N]
[--min-replicas N]``

Starts both, on loopback: a Sentinel-managed Redis (a master, two replicas, three Sentinels:
testkit/redis_sentinel.py) and a Redis Cluster (three masters with two replicas each:
testkit/redis_cluster.py), and runs the rounds of bench/redis_rounds.py against each, side by side
(the store's rounds in alternating batches, the service's rounds in alternating order), with the same
``REDIS_MIN_REPLICAS`` (default 1: a write counts once one replica of its shard holds it).

What it shows is the cost of the cluster's client side: the slot map, every room's commands pinned to
the master of its slot, the indexes that span rooms written after the room's own script. What it cannot
show on one machine is what the cluster is for: every node shares the same two cores, so three masters
serve no more than one here; across machines each master adds its own CPU, memory and network.

Prints a table; all figures in ``bench/results/redis-cluster.json``.
"""

from __future__ import annotations

import asyncio
import uuid

from bench.redis_rounds import Setup, arguments, compare, report
from livekit_signaling.store.redis import RedisStateStore
from livekit_signaling.store.target import RedisTarget
from testkit.redis_cluster import RedisClusterGroup
from testkit.redis_sentinel import RedisSentinelGroup


def _store(target: RedisTarget, min_replicas: int) -> RedisStateStore:
    return RedisStateStore(
        target,
        prefix=f"bench-cluster-{uuid.uuid4().hex[:8]}",
        dedup_window_seconds=60,
        room_idle_seconds=600,
        min_replicas=min_replicas,
    )


async def main() -> None:
    parser = arguments(__doc__ or "")
    parser.add_argument("--min-replicas", type=int, default=1, help="REDIS_MIN_REPLICAS of both")
    args = parser.parse_args()
    replicas = str(args.min_replicas)
    with RedisSentinelGroup(replicas=2) as single, RedisClusterGroup() as cluster:
        setups = {
            "single": Setup(
                store=lambda: _store(single.target(), args.min_replicas),
                env=single.service_env(REDIS_MIN_REPLICAS=replicas),
            ),
            "cluster": Setup(
                store=lambda: _store(cluster.target(), args.min_replicas),
                env=cluster.service_env(REDIS_MIN_REPLICAS=replicas),
            ),
        }
        results = await compare(setups, args)
    title = f"REDIS_MIN_REPLICAS={replicas}; single Redis | Redis Cluster | ratio cluster/single"
    report(results, args, title=title, file_name="redis-cluster.json")


if __name__ == "__main__":
    asyncio.run(main())
