"""Benchmark of the signaling service against a bare aio-pika baseline, measured in the same run.

    .venv/bin/python -m bench.run [--quick] [--partitions N] [--only w1,w4] [--profile] [--redis]

See bench/README.md. Every workload gets a fresh service (or baseline) process on a fresh uuid-named
topology, deleted afterwards; one LiveKit emulator process serves the whole run.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import aiormq
import psutil  # type: ignore[import-untyped]

from bench.harness import (
    RESULTS,
    BaselineTarget,
    EmulatorProcess,
    ServiceTarget,
    Target,
    wait_for_broker,
)
from bench.profile import Profiler
from bench.report import plot_latency, table, write_json
from bench.workloads import (
    Env,
    Figures,
    Sizes,
    fanout_baseline,
    percentile,
    w1_throughput,
    w2_latency,
    w3_join_storm,
    w4_fanout_service,
    w5_force_mute_service,
    w6_memory,
)

ALL = ("w1", "w2", "w3", "w4", "w5", "w6")
PROFILE_ROUNDS = 5


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run in under a minute")
    parser.add_argument("--partitions", type=int, default=4, help="SIGNALING_PARTITIONS of both (default 4)")
    parser.add_argument("--prefetch", type=int, default=32, help="AMQP_PREFETCH of both (default 32)")
    parser.add_argument("--redis", action="store_true", help="the service keeps state in Redis, not memory")
    parser.add_argument("--only", default=",".join(ALL), help="comma-separated workloads (default: all)")
    parser.add_argument("--profile", action="store_true", help="py-spy the service during W1 and W4")
    parser.add_argument("--output", default=str(RESULTS / "latest.json"), help="JSON of every figure")
    args = parser.parse_args(argv)
    args.only = [w.strip().lower() for w in args.only.split(",") if w.strip()]
    unknown = set(args.only) - set(ALL)
    if unknown:
        parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    return args


def _git_commit() -> str:
    command = ["git", "rev-parse", "--short", "HEAD"]
    try:
        out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=5)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


class Runner:
    def __init__(self, args: argparse.Namespace, env: Env) -> None:
        self.args = args
        self.env = env
        self.sizes = Sizes.quick() if args.quick else Sizes.full()

    def service(self) -> Target:
        return ServiceTarget(
            self.env.emulator_url, self.args.partitions, self.args.prefetch, use_redis=self.args.redis
        )

    def baseline(self) -> Target:
        return BaselineTarget(self.args.partitions, self.args.prefetch)

    def on(
        self, make: Callable[[], Target], workload: Callable[[Target], Coroutine[Any, Any, Figures]]
    ) -> Figures:
        """Start a fresh target, run one workload against it, stop it and delete its topology. Other
        people's tests may restart the shared broker: a workload that failed on a connection error or did
        not get all its events is run once more, on new processes and a new topology."""
        for attempt in (1, 2):
            target = make()
            started = time.perf_counter()
            try:
                target.start()
                try:
                    figures: Figures = asyncio.run(workload(target))
                finally:
                    target.stop()
            except (ConnectionError, aiormq.exceptions.AMQPError, RuntimeError, TimeoutError) as error:
                if attempt == 2:
                    raise
                print(f"  {target.label}: {type(error).__name__} ({error}); broker restarted? once more")
                wait_for_broker()
                continue
            if figures.get("complete", True) or attempt == 2:
                break
            print(f"  {target.label}: not all events arrived; once more")
            wait_for_broker()
        figures["attempts"] = attempt
        figures["wall_seconds_incl_start_stop"] = round(time.perf_counter() - started, 1)
        state = "" if figures.get("complete", True) else "  INCOMPLETE"
        print(
            f"  {target.label:<8} done in {figures['wall_seconds_incl_start_stop']:.1f}s{state}", flush=True
        )
        return figures


def run(args: argparse.Namespace) -> dict[str, Any]:
    emulator = EmulatorProcess(mute_delay=15.0)
    profiler = Profiler() if args.profile else None
    env = Env(
        emulator_url=emulator.url,
        emulator_pid=emulator.process.pid,
        profiler=profiler,
    )
    runner = Runner(args, env)
    sizes = runner.sizes
    results: dict[str, Any] = {}
    samples: dict[str, list[float]] = {}
    try:
        baseline_rate: float | None = None
        if "w1" in args.only or "w2" in args.only:
            print(f"W1 throughput: {sizes.w1_commands:,} create_new_access_token over {sizes.w1_rooms} rooms")
            base = runner.on(runner.baseline, lambda t: w1_throughput(t, env, sizes))
            baseline_rate = float(base["commands_per_second"])
            if "w1" in args.only:
                svc = runner.on(runner.service, lambda t: w1_throughput(t, env, sizes, profile_name="w1"))
                results["w1"] = {"service": svc, "baseline": base}
        if "w2" in args.only:
            assert baseline_rate is not None
            rate = baseline_rate / 2
            print(f"W2 latency at {rate:,.0f} cmd/s for {sizes.w2_seconds:g}s")
            base = runner.on(runner.baseline, lambda t: w2_latency(t, env, sizes, rate))
            svc = runner.on(runner.service, lambda t: w2_latency(t, env, sizes, rate))
            samples = {"service": svc.pop("samples_s"), "baseline": base.pop("samples_s")}
            for side, values in (("service", svc), ("baseline", base)):
                values["percentiles_ms"] = {
                    f"p{q:g}": round(percentile(samples[side], q) * 1000, 3)
                    for q in (1, 10, 25, 50, 75, 90, 95, 99, 99.9)
                }
            results["w2"] = {"service": svc, "baseline": base}
        if "w3" in args.only:
            print(f"W3 join storm: {sizes.w3_joins:,} joins over {sizes.w3_rooms} rooms")
            base = runner.on(runner.baseline, lambda t: w3_join_storm(t, env, sizes))
            svc = runner.on(runner.service, lambda t: w3_join_storm(t, env, sizes))
            results["w3"] = {"service": svc, "baseline": base}
        if "w4" in args.only:
            n = sizes.w4_participants
            print(f"W4 fan-out: enable_microphone_restrictions in a room of {n:,}")
            base = runner.on(runner.baseline, lambda t: fanout_baseline(t, env, sizes, n))
            rounds = PROFILE_ROUNDS if profiler is not None else 0
            svc = runner.on(
                runner.service,
                lambda t: w4_fanout_service(t, env, sizes, profile_name="w4", profile_rounds=rounds),
            )
            results["w4"] = {"service": svc, "baseline": base}
        if "w5" in args.only:
            n = sizes.w5_participants
            print(f"W5 force_mute of {n} participants")
            base = runner.on(runner.baseline, lambda t: fanout_baseline(t, env, sizes, n))
            svc = runner.on(runner.service, lambda t: w5_force_mute_service(t, env, sizes))
            results["w5"] = {"service": svc, "baseline": base}
        if "w6" in args.only:
            total = sizes.w6_rooms * sizes.w6_per_room
            print(f"W6 memory: {total:,} joins over {sizes.w6_rooms:,} rooms")
            base = runner.on(runner.baseline, lambda t: w6_memory(t, env, sizes))
            svc = runner.on(runner.service, lambda t: w6_memory(t, env, sizes))
            results["w6"] = {"service": svc, "baseline": base}
    finally:
        if profiler is not None:
            profiler.stop()
        emulator.stop()
    return {"results": results, "samples": samples, "profiles": profiler.outputs if profiler else {}}


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    sizes = Sizes.quick() if args.quick else Sizes.full()
    meta = {
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": _git_commit(),
        "mode": "quick" if args.quick else "full",
        "partitions": args.partitions,
        "prefetch": args.prefetch,
        "store": "redis" if args.redis else "memory",
        "profiled": args.profile,
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": sys.version.split()[0],
        "sizes": sizes.__dict__,
        "note": (
            "service, baseline, LiveKit emulator, RabbitMQ and the load generator share the same cores; "
            "each process's share during W1 is in w1.*.cores_used"
        ),
    }
    print(
        f"livekit-signaling bench ({meta['mode']}): {meta['logical_cores']} cores ({meta['cpu']}) shared by "
        f"service, baseline, emulator, RabbitMQ and load generator; partitions={args.partitions} for both, "
        f"prefetch={args.prefetch}, store={meta['store']}"
        + (", PROFILED (py-spy slows it)" if args.profile else "")
    )
    started = time.perf_counter()
    outcome = run(args)
    results = outcome["results"]
    meta["total_seconds"] = round(time.perf_counter() - started, 1)
    print()
    print(table(results))
    for side, figures in results.get("w1", {}).items():
        shares = ", ".join(f"{name} {cores:.2f}" for name, cores in figures["cores_used"].items())
        print(f"W1 cores busy during the {side} run (CPU s per wall s; target = the {side}): {shares}")
    incomplete = [
        f"{name}/{side}: {figs.get('events_received')} of {figs.get('events_expected')} events"
        for name, sides in results.items()
        for side, figs in sides.items()
        if not figs.get("complete", True) or figs.get("error_events")
    ]
    for problem in incomplete:
        print(f"WARNING incomplete or error events: {problem}")
    output = os.path.abspath(args.output)
    write_json(Path(output), {"meta": meta, **results})
    print(f"\nJSON: {output}")
    if outcome["samples"]:
        png = RESULTS / "latency.png"
        caption = (
            f"{meta['logical_cores']} shared cores, partitions={args.partitions}, prefetch={args.prefetch}, "
            f"store={meta['store']}, commit {meta['commit']}"
        )
        rate = results["w2"]["service"].get("offered_rate")
        plot_latency(png, outcome["samples"], rate, caption)
        write_json(RESULTS / "latency-samples.json", {"unit": "seconds", **outcome["samples"]})
        print(f"PNG:  {png}")
    for name, path in outcome["profiles"].items():
        print(f"profile {name}: {path} (summary: {path.with_name(path.stem + '-summary.txt')})")
    print(f"total {meta['total_seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
