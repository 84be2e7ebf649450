"""Throughput of one replica against three (issue 4), on the same machine, in one run.

``.venv/bin/python -m bench.replicas [--commands N] [--partitions P]``: for 1 and then 3 replicas
sharing Redis and P partition queues, warm up until the partitions are shared out (each replica active
on some, nobody above its quota), then publish N ``create_new_access_token`` over 500 rooms (bounded
window of unconfirmed publishes) and time them until the last event. Prints commands/s, each replica's
share, and the ratio. On this 2-core machine three replicas compete for the same cores as RabbitMQ and
the load generator, so the ratio measures the cost of coordination more than added capacity.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid

from bench.harness import RESULTS, _clean_up
from bench.loadgen import LoadGenerator, command
from tests.support.processes import REDIS_URL, EmulatorProcess, Names, ServiceProcess

TOKEN = {"action": "create_new_access_token"}
ROOMS = 500


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


async def measure(emulator_url: str, count: int, partitions: int, commands: int) -> dict[str, object]:
    names = Names(prefix=f"bench-replicas-{uuid.uuid4().hex[:10]}")
    env = {
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
        async with LoadGenerator(names) as gen:
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
        await _clean_up(names, partitions, redis_too=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--commands", type=int, default=10_000)
    parser.add_argument("--partitions", type=int, default=16)
    args = parser.parse_args()
    emulator = EmulatorProcess()
    try:
        one = await measure(emulator.url, 1, args.partitions, args.commands)
        three = await measure(emulator.url, 3, args.partitions, args.commands)
    finally:
        emulator.stop()
    ratio = float(three["commands_per_second"]) / float(one["commands_per_second"])  # type: ignore[arg-type]
    print(f"1 replica : {one['commands_per_second']:>8} cmd/s")
    print(f"3 replicas: {three['commands_per_second']:>8} cmd/s, shares {three['shares']}")
    print(f"ratio 3/1 : {ratio:.2f} (2 cores shared with RabbitMQ, Redis and the load generator)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "replicas.json").write_text(json.dumps({"one": one, "three": three, "ratio": ratio}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
