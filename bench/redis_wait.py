"""What "acknowledged state is replicated state" costs: ``REDIS_MIN_REPLICAS`` 0 against 1.

``.venv/bin/python -m bench.redis_wait [--rounds N] [--commands N] [--rate R] [--store-ops N]``

Starts a Sentinel-managed Redis (master, one replica, three Sentinels: testkit/redis_sentinel.py)
and measures, with 0 and 1 required replicas alternating round by round, on the same Redis:

- **store**: the state-store work of one state-writing command (load, then save the sender's entry:
  ``[EVAL, WAIT]`` in one pipeline) run back to back on one room: µs per command; and 32 rooms at
  once: commands/s. Both settings run side by side in alternating batches.
- **service**: the service process (``REDIS_SENTINELS``) answering ``request_popout_stream_access_token``,
  which saves the room's state every time (one more popout identity), over 500 rooms: as fast as
  confirmed (commands/s), and at a fixed rate (latency from publish to event, p50/p99).

Token refreshes and joins of known participants write nothing, so they cost nothing extra; the figures
are for the commands that write. Prints a table; all figures in ``bench/results/redis-wait.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from typing import Any

from bench.harness import RESULTS, remove_run
from bench.loadgen import LoadGenerator, command
from bench.workloads import latency_figures
from livekit_signaling.domain.state import RosterEntry
from livekit_signaling.store.redis import RedisStateStore
from testkit.processes import EmulatorProcess, Names, ServiceProcess
from testkit.redis_sentinel import RedisSentinelGroup

POPOUT = {"action": "request_popout_stream_access_token"}
ROOMS = 500
PARTITIONS = 4
CONCURRENT_ROOMS = 32


def _store(group: RedisSentinelGroup, min_replicas: int) -> RedisStateStore:
    return RedisStateStore(
        group.target(),
        prefix=f"bench-wait-{uuid.uuid4().hex[:8]}",
        dedup_window_seconds=60,
        room_idle_seconds=600,
        min_replicas=min_replicas,
    )


async def _write_command(store: RedisStateStore, room: str) -> None:
    """The store's part of a state-writing command: load, one more popout, save."""
    state = await store.load(room, ["p"])
    entry = state.participants.get("p", RosterEntry(role="user", kind="user", popouts=0))
    state.participants["p"] = RosterEntry(role=entry.role, kind=entry.kind, popouts=entry.popouts + 1)
    await store.save_entry(room, state, "p")


async def _store_round(group: RedisSentinelGroup, operations: int) -> dict[int, dict[str, Any]]:
    """Both settings side by side, in alternating batches of 50, so that both see the same machine
    (its other tenants come and go within seconds)."""
    stores = {replicas: _store(group, replicas) for replicas in (0, 1)}
    durations: dict[int, list[float]] = {0: [], 1: []}
    concurrent: dict[int, list[float]] = {0: [], 1: []}
    try:
        for store in stores.values():
            for _ in range(100):
                await _write_command(store, "warm")
        for _ in range(max(1, operations // 50)):
            for replicas, store in stores.items():
                for _ in range(50):
                    started = time.perf_counter()
                    await _write_command(store, "one-room")
                    durations[replicas].append(time.perf_counter() - started)

        async def room_worker(store: RedisStateStore, room: str) -> None:
            for _ in range(10):
                await _write_command(store, room)

        for _ in range(max(1, operations // (10 * CONCURRENT_ROOMS))):
            for replicas, store in stores.items():
                started = time.perf_counter()
                await asyncio.gather(*(room_worker(store, f"room-{n}") for n in range(CONCURRENT_ROOMS)))
                concurrent[replicas].append(10 * CONCURRENT_ROOMS / (time.perf_counter() - started))
    finally:
        for store in stores.values():
            await store.close()
    figures = {}
    for replicas, values in durations.items():
        values.sort()
        figures[replicas] = {
            "sequential_us_p50": round(values[len(values) // 2] * 1e6, 1),
            "sequential_us_p99": round(values[int(len(values) * 0.99)] * 1e6, 1),
            "sequential_us_mean": round(statistics.fmean(values) * 1e6, 1),
            "concurrent_commands_per_second": round(statistics.median(concurrent[replicas])),
        }
    return figures


async def _service_round(
    group: RedisSentinelGroup, emulator_url: str, min_replicas: int, commands: int, rate: float
) -> dict[str, Any]:
    names = Names(prefix=f"bench-wait-{uuid.uuid4().hex[:10]}")
    env = group.service_env(REDIS_MIN_REPLICAS=str(min_replicas), LIVEKIT_REQUEST_TIMEOUT_SECONDS="2")
    service = ServiceProcess(names, emulator_url, partitions=PARTITIONS, env=env, name=f"wait{min_replicas}")
    try:
        await asyncio.to_thread(service.start)
        async with LoadGenerator(names) as gen:
            rooms = [f"r-{uuid.uuid4().hex[:6]}-{n}" for n in range(ROOMS)]
            warm = [command(room, "p0", POPOUT) for room in rooms]
            await gen.publish_all(warm)
            await gen.collector.wait_total(len(warm), 60)

            burst = [command(rooms[i % ROOMS], "p0", POPOUT) for i in range(commands)]
            target = gen.collector.received + len(burst)
            started = time.perf_counter()
            await gen.publish_all(burst)
            complete = await gen.collector.wait_total(target, 120)
            throughput = len(burst) / (gen.collector.last_received - started)

            paced = [command(rooms[i % ROOMS], "p0", POPOUT) for i in range(round(rate * 10))]
            target = gen.collector.received + len(paced)
            await gen.publish_at_rate(paced, rate)
            complete = await gen.collector.wait_total(target, 60) and complete
            tracks = [gen.collector.tracks[c.message_id] for c in paced]
            latencies = sorted(t.first - t.sent for t in tracks if t.events)
        return {
            "commands_per_second": round(throughput, 1),
            "rate": rate,
            **{k: v for k, v in latency_figures(latencies).items() if k in ("p50_ms", "p99_ms")},
            "complete": complete,
            "errors": gen.collector.errors(),
        }
    finally:
        await asyncio.to_thread(service.stop)
        await remove_run(names, PARTITIONS, redis_keys=False)


def _median(rounds: list[dict[str, Any]], key: str) -> float:
    """Over the rounds that completed (a broker restarted by another tenant of the machine spoils one)."""
    return float(statistics.median(r[key] for r in rounds if r.get("complete", True)))


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--commands", type=int, default=5000, help="state writes per throughput round")
    parser.add_argument("--rate", type=float, default=50.0, help="commands/s of the latency round")
    parser.add_argument("--store-ops", type=int, default=3000, help="load+save cycles per store round")
    args = parser.parse_args()
    results: dict[str, dict[int, list[dict[str, Any]]]] = {"store": {0: [], 1: []}, "service": {0: [], 1: []}}
    emulator = EmulatorProcess()
    try:
        with RedisSentinelGroup() as group:
            for round_number in range(args.rounds):
                order = (0, 1) if round_number % 2 == 0 else (1, 0)
                for replicas, figures in (await _store_round(group, args.store_ops)).items():
                    results["store"][replicas].append(figures)
                for replicas in order:
                    service = await _service_round(group, emulator.url, replicas, args.commands, args.rate)
                    results["service"][replicas].append(service)
                latest = {key: {r: rounds[r][-1] for r in (0, 1)} for key, rounds in results.items()}
                print(f"round {round_number + 1}: {json.dumps(latest)}", flush=True)
    finally:
        emulator.stop()

    store, service = results["store"], results["service"]
    rows = [
        ("store: load+save, one room, p50 (µs)", "sequential_us_p50", store),
        ("store: load+save, one room, p99 (µs)", "sequential_us_p99", store),
        (f"store: {CONCURRENT_ROOMS} rooms at once (cmd/s)", "concurrent_commands_per_second", store),
        ("service: state writes as fast as confirmed (cmd/s)", "commands_per_second", service),
        (f"service: p50 at {args.rate:.0f} cmd/s (ms)", "p50_ms", service),
        (f"service: p99 at {args.rate:.0f} cmd/s (ms)", "p99_ms", service),
    ]
    print(f"\nmedian of {args.rounds} rounds; REDIS_MIN_REPLICAS 0 | 1 | ratio 1/0")
    for title, key, rounds in rows:
        without, with_wait = _median(rounds[0], key), _median(rounds[1], key)
        print(f"{title:<55} {without:>10.1f} {with_wait:>10.1f} {with_wait / without:>7.2f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "redis-wait.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
