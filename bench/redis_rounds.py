"""The rounds the Redis benches share (bench.redis_wait, bench.redis_cluster): the same work against two
or more Redis set-ups, side by side, so that every figure has its counterpart from the same minutes of
the same machine.

- **store** (``store_round``): the state-store work of one state-writing command (load, then save the
  sender's entry: ``[EVAL, WAIT]`` in one pipeline) run back to back on one room, µs per command; and 32
  rooms at once, commands/s. The stores take turns in batches of 50.
- **service** (``service_round``): the service process answering ``request_popout_stream_access_token``,
  which saves the room's state every time (one more popout identity), over 500 rooms: as fast as
  confirmed (commands/s, and the service's CPU per 1,000 commands), and at a fixed rate (latency from
  publish to event, p50/p99).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bench.harness import RESULTS, cpu_seconds, remove_run
from bench.loadgen import LoadGenerator, command
from bench.workloads import latency_figures
from livekit_signaling.domain.state import RosterEntry
from livekit_signaling.store.redis import RedisStateStore
from testkit.processes import EmulatorProcess, Names, ServiceProcess

#: One set-up's figures per kind of round ("store", "service"), per label, per round.
Results = dict[str, dict[str, list[dict[str, Any]]]]

POPOUT = {"action": "request_popout_stream_access_token"}
ROOMS = 500
PARTITIONS = 4
CONCURRENT_ROOMS = 32


async def write_command(store: RedisStateStore, room: str) -> None:
    """The store's part of a state-writing command: load, one more popout, save."""
    state = await store.load(room, ["p"])
    entry = state.participants.get("p", RosterEntry(role="user", kind="user", popouts=0))
    state.participants["p"] = RosterEntry(role=entry.role, kind=entry.kind, popouts=entry.popouts + 1)
    await store.save_entry(room, state, "p")


async def store_round(stores: Mapping[str, RedisStateStore], operations: int) -> dict[str, dict[str, Any]]:
    """Every store side by side, in alternating batches of 50, so that all see the same machine (its
    other tenants come and go within seconds); the stores stay open (the caller closes them)."""
    durations: dict[str, list[float]] = {label: [] for label in stores}
    concurrent: dict[str, list[float]] = {label: [] for label in stores}
    for store in stores.values():
        for _ in range(100):
            await write_command(store, "warm")
    for _ in range(max(1, operations // 50)):
        for label, store in stores.items():
            for _ in range(50):
                started = time.perf_counter()
                await write_command(store, "one-room")
                durations[label].append(time.perf_counter() - started)

    async def room_worker(store: RedisStateStore, room: str) -> None:
        for _ in range(10):
            await write_command(store, room)

    for _ in range(max(1, operations // (10 * CONCURRENT_ROOMS))):
        for label, store in stores.items():
            started = time.perf_counter()
            await asyncio.gather(*(room_worker(store, f"room-{n}") for n in range(CONCURRENT_ROOMS)))
            concurrent[label].append(10 * CONCURRENT_ROOMS / (time.perf_counter() - started))
    figures = {}
    for label, values in durations.items():
        values.sort()
        figures[label] = {
            "sequential_us_p50": round(values[len(values) // 2] * 1e6, 1),
            "sequential_us_p99": round(values[int(len(values) * 0.99)] * 1e6, 1),
            "sequential_us_mean": round(statistics.fmean(values) * 1e6, 1),
            "concurrent_commands_per_second": round(statistics.median(concurrent[label])),
        }
    return figures


async def service_round(
    env: Mapping[str, str], label: str, emulator_url: str, commands: int, rate: float
) -> dict[str, Any]:
    """One service process with ``env`` (where its Redis is) on a topology of its own."""
    names = Names(prefix=f"bench-{label}-{uuid.uuid4().hex[:10]}")
    env = {**env, "LIVEKIT_REQUEST_TIMEOUT_SECONDS": "2"}
    service = ServiceProcess(names, emulator_url, partitions=PARTITIONS, env=env, name=label)
    try:
        await asyncio.to_thread(service.start)
        async with LoadGenerator(names) as gen:
            rooms = [f"r-{uuid.uuid4().hex[:6]}-{n}" for n in range(ROOMS)]
            warm = [command(room, "p0", POPOUT) for room in rooms]
            await gen.publish_all(warm)
            await gen.collector.wait_total(len(warm), 60)

            burst = [command(rooms[i % ROOMS], "p0", POPOUT) for i in range(commands)]
            target = gen.collector.received + len(burst)
            pid = service.process.pid if service.process is not None else None
            cpu_before = cpu_seconds(pid)
            started = time.perf_counter()
            await gen.publish_all(burst)
            complete = await gen.collector.wait_total(target, 120)
            throughput = len(burst) / (gen.collector.last_received - started)
            cpu = cpu_seconds(pid) - cpu_before

            paced = [command(rooms[i % ROOMS], "p0", POPOUT) for i in range(round(rate * 10))]
            target = gen.collector.received + len(paced)
            await gen.publish_at_rate(paced, rate)
            complete = await gen.collector.wait_total(target, 60) and complete
            tracks = [gen.collector.tracks[c.message_id] for c in paced]
            latencies = sorted(t.first - t.sent for t in tracks if t.events)
        return {
            "commands_per_second": round(throughput, 1),
            "cpu_ms_per_1000_commands": round(cpu / len(burst) * 1e6, 1),
            "rate": rate,
            **{k: v for k, v in latency_figures(latencies).items() if k in ("p50_ms", "p99_ms")},
            "complete": complete,
            "errors": gen.collector.errors(),
        }
    finally:
        await asyncio.to_thread(service.stop)
        await remove_run(names, PARTITIONS, redis_keys=False)


def median(rounds: Sequence[Mapping[str, Any]], key: str) -> float:
    """Over the rounds that completed (a broker restarted by another tenant of the machine spoils one)."""
    return float(statistics.median(r[key] for r in rounds if r.get("complete", True)))


def table(
    results: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]],
    labels: Sequence[str],
    *,
    rate: float,
) -> list[str]:
    """Medians per figure and set-up, and the ratio of the last set-up to the first."""
    rows = [
        ("store: load+save, one room, p50 (µs)", "sequential_us_p50", "store"),
        ("store: load+save, one room, p99 (µs)", "sequential_us_p99", "store"),
        (f"store: {CONCURRENT_ROOMS} rooms at once (cmd/s)", "concurrent_commands_per_second", "store"),
        ("service: state writes as fast as confirmed (cmd/s)", "commands_per_second", "service"),
        ("service: CPU per 1,000 of them (ms)", "cpu_ms_per_1000_commands", "service"),
        (f"service: p50 at {rate:.0f} cmd/s (ms)", "p50_ms", "service"),
        (f"service: p99 at {rate:.0f} cmd/s (ms)", "p99_ms", "service"),
    ]
    lines = [f"{'':<55}" + "".join(f"{label:>12}" for label in labels) + f"{'ratio':>8}"]
    for title, key, kind in rows:
        values = [median(results[kind][label], key) for label in labels]
        shown = "".join(f"{value:>12.1f}" for value in values)
        lines.append(f"{title:<55}{shown}{values[-1] / values[0]:>8.2f}")
    return lines


def latest(results: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]]) -> str:
    """The last round's figures of every set-up, as one JSON line."""
    return json.dumps(
        {
            kind: {label: rounds[-1] for label, rounds in by_label.items()}
            for kind, by_label in results.items()
        }
    )


@dataclass(frozen=True)
class Setup:
    """One Redis set-up the rounds compare: a new store on it (one per round, closed after it), and the
    service's environment for it."""

    store: Callable[[], RedisStateStore]
    env: Mapping[str, str]


def arguments(description: str) -> argparse.ArgumentParser:
    """The options every Redis bench takes (a bench may add its own)."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--commands", type=int, default=5000, help="state writes per throughput round")
    parser.add_argument("--rate", type=float, default=50.0, help="commands/s of the latency round")
    parser.add_argument("--store-ops", type=int, default=3000, help="load+save cycles per store round")
    return parser


async def compare(setups: Mapping[str, Setup], args: argparse.Namespace) -> Results:
    """``args.rounds`` rounds over every set-up: the store's side by side, the service's in an order
    that alternates round by round; prints each round's figures as it ends."""
    labels = list(setups)
    results: Results = {"store": {label: [] for label in labels}, "service": {label: [] for label in labels}}
    emulator = EmulatorProcess()
    try:
        for round_number in range(args.rounds):
            stores = {label: setup.store() for label, setup in setups.items()}
            try:
                for label, figures in (await store_round(stores, args.store_ops)).items():
                    results["store"][label].append(figures)
            finally:
                for store in stores.values():
                    await store.close()
            for label in labels if round_number % 2 == 0 else reversed(labels):
                service = await service_round(
                    setups[label].env, label, emulator.url, args.commands, args.rate
                )
                results["service"][label].append(service)
            print(f"round {round_number + 1}: {latest(results)}", flush=True)
    finally:
        emulator.stop()
    return results


def report(results: Results, args: argparse.Namespace, *, title: str, file_name: str) -> None:
    """The table of medians under ``title``; every figure into ``bench/results/<file_name>``."""
    print(f"\nmedian of {args.rounds} rounds; {title}")
    print("\n".join(table(results, list(results["store"]), rate=args.rate)))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / file_name).write_text(json.dumps(results, indent=2))
