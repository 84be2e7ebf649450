"""Throughput of one replica against three (does scaling out add capacity, or only coordination?), and of
one replica on a 3-node RabbitMQ cluster against a single node (what replicated quorum queues cost), on
the same machine, in one run.

``.venv/bin/python -m bench.replicas [--commands N] [--partitions P]``: for 1 and then 3 replicas
sharing Redis and P partition queues, warm up until the partitions are shared out (each replica active on
some, nobody above its quota), then publish N ``create_new_access_token`` over 500 rooms (bounded window
of unconfirmed publishes) and time them until the last event. Prints commands/s, each replica's share,
and the ratio. On this 2-core machine three replicas compete for the same cores as RabbitMQ and the load
generator, so the ratio measures the cost of coordination more than added capacity.

``--cluster [--rounds R]`` starts a 3-node cluster beside the system node
(``testkit/rabbit_cluster.py``; needs root, about a minute) and measures one replica on the system
node and one on the cluster instead, R rounds of each, alternating; the median rounds are compared. On
the cluster the replica has every node in ``AMQP_URL`` and is on node a, the load generator publishes
through node b and receives through node c, and the partition leaders are spread (``balanced``): a
command crosses nodes as in production, every quorum commit needs two of the three nodes, and the three
nodes share the same two cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from bench.harness import RESULTS, remove_run
from bench.loadgen import LoadGenerator, command
from testkit.processes import AMQP_URL, REDIS_URL, EmulatorProcess, Names, ServiceProcess

TOKEN = {"action": "create_new_access_token"}
ROOMS = 500


@dataclass(frozen=True)
class Broker:
    """Where the replicas and the load generator connect."""

    label: str
    service_url: str  # AMQP_URL of the replicas (one URL, or a cluster's, comma-separated)
    publish_urls: Sequence[str] = (AMQP_URL,)
    event_urls: Sequence[str] = (AMQP_URL,)


SINGLE_NODE = Broker("single node", AMQP_URL)


def _handled(replica: ServiceProcess) -> float:
    return replica.metric("livekit_signaling_commands_total", action="create_new_access_token")


async def _balanced(gen: LoadGenerator, replicas: list[ServiceProcess], partitions: int) -> None:
    quota = -(-partitions // len(replicas))
    for round_number in range(60):
        warm = [command(f"warm-{round_number}-{i}", "w", TOKEN) for i in range(200)]
        target = gen.collector.received + len(warm)
        await gen.publish_all(warm)
        await gen.collector.wait_total(target, 30)
        held = [replica.metric("livekit_signaling_partitions_active") for replica in replicas]
        if min(held) >= 1 and max(held) <= quota:
            return
        await asyncio.sleep(0.5)
    raise RuntimeError(f"partitions never shared out: {held}")


async def measure(
    emulator_url: str, count: int, partitions: int, commands: int, broker: Broker = SINGLE_NODE
) -> dict[str, object]:
    names = Names(prefix=f"bench-replicas-{uuid.uuid4().hex[:10]}")
    env = {
        "AMQP_URL": broker.service_url,
        "REDIS_URL": REDIS_URL,
        "REBALANCE_INTERVAL_SECONDS": "0.5",
        "LIVEKIT_REQUEST_TIMEOUT_SECONDS": "2",
    }
    replicas = [
        ServiceProcess(names, emulator_url, partitions=partitions, env=env, name=f"replica{n}")
        for n in range(count)
    ]
    try:
        for replica in replicas:
            await asyncio.to_thread(replica.start)
        async with LoadGenerator(
            names, publish_urls=broker.publish_urls, event_urls=broker.event_urls
        ) as gen:
            await _balanced(gen, replicas, partitions)
            before = [_handled(replica) for replica in replicas]
            load = [command(f"r-{i % ROOMS}", f"p{i // ROOMS % 10}", TOKEN) for i in range(commands)]
            target = gen.collector.received + len(load)
            started = time.perf_counter()
            await gen.publish_all(load)
            complete = await gen.collector.wait_total(target, 120)
            elapsed = gen.collector.last_received - started
            await asyncio.sleep(0.5)  # metrics are updated just after each ack
            shares = [(_handled(r) - b) / commands for r, b in zip(replicas, before, strict=True)]
        return {
            "broker": broker.label,
            "replicas": count,
            "commands": commands,
            "seconds": round(elapsed, 3),
            "commands_per_second": round(commands / elapsed, 1),
            "shares": [round(share, 3) for share in shares],
            "complete": complete,
        }
    finally:
        for replica in replicas:
            await asyncio.to_thread(replica.stop)
        await remove_run(names, partitions, redis_keys=True, urls=broker.service_url.split(","))


async def replicas_on_one_node(emulator_url: str, partitions: int, commands: int) -> None:
    one = await measure(emulator_url, 1, partitions, commands)
    three = await measure(emulator_url, 3, partitions, commands)
    ratio = float(three["commands_per_second"]) / float(one["commands_per_second"])  # type: ignore[arg-type]
    print(f"1 replica : {one['commands_per_second']:>8} cmd/s")
    print(f"3 replicas: {three['commands_per_second']:>8} cmd/s, shares {three['shares']}")
    print(f"ratio 3/1 : {ratio:.2f} (2 cores shared with RabbitMQ, Redis and the load generator)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "replicas.json").write_text(json.dumps({"one": one, "three": three, "ratio": ratio}, indent=2))


async def single_node_and_cluster(emulator_url: str, partitions: int, commands: int, rounds: int) -> None:
    """``rounds`` times each, single node and cluster alternating (the machine's load drifts); the
    median round of each is compared."""
    from testkit.rabbit_cluster import RabbitCluster

    cluster = RabbitCluster()
    await asyncio.to_thread(cluster.start_cluster)
    print(f"3-node cluster started in {cluster.started_in:.1f}s")
    single: list[dict[str, object]] = []
    clustered: list[dict[str, object]] = []
    try:
        on_cluster = Broker(
            "3-node cluster",
            cluster.amqp_url(first="a"),
            publish_urls=cluster.urls(first="b"),
            event_urls=cluster.urls(first="c"),
        )
        for _ in range(rounds):
            single.append(await measure(emulator_url, 1, partitions, commands))
            clustered.append(await measure(emulator_url, 1, partitions, commands, on_cluster))
    finally:
        await asyncio.to_thread(cluster.close)

    def rates(results: list[dict[str, object]]) -> list[float]:
        return [float(r["commands_per_second"]) for r in results]  # type: ignore[arg-type]

    single_median, cluster_median = statistics.median(rates(single)), statistics.median(rates(clustered))
    ratio = cluster_median / single_median
    print(f"1 replica, single node   : {single_median:>8.1f} cmd/s (median; rounds {rates(single)})")
    print(f"1 replica, 3-node cluster: {cluster_median:>8.1f} cmd/s (median; rounds {rates(clustered)})")
    print(f"ratio cluster/single     : {ratio:.2f} (the cluster's 3 nodes share the same 2 cores)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "replicas-cluster.json").write_text(
        json.dumps({"single_node": single, "cluster": clustered, "ratio_of_medians": ratio}, indent=2)
    )


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--commands", type=int, default=10_000)
    parser.add_argument("--partitions", type=int, default=16)
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="one replica on a 3-node RabbitMQ cluster (started here; needs root) next to one on the "
        "single node",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="with --cluster: rounds of each, alternating (default 3)"
    )
    args = parser.parse_args()
    emulator = EmulatorProcess()
    try:
        if args.cluster:
            await single_node_and_cluster(emulator.url, args.partitions, args.commands, args.rounds)
        else:
            await replicas_on_one_node(emulator.url, args.partitions, args.commands)
    finally:
        emulator.stop()


if __name__ == "__main__":
    asyncio.run(main())
