"""Benchmark of the signaling service against a bare aio-pika baseline, measured in the same run.

    .venv/bin/python -m bench.run [--quick] [--partitions N] [--only w1,w4] [--profile] [--redis]
    .venv/bin/python -m bench.run --compare COMMIT [--only w1,w8] [--rounds N] [--redis]

See bench/README.md. Every workload gets a fresh service (or baseline) process on a fresh uuid-named
topology, deleted afterwards; one LiveKit emulator process serves the whole run.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import hashlib
import os
import platform
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]

from bench.compare import run_compare
from bench.harness import (
    RESULTS,
    cpu_seconds,
    rabbitmq_pid,
)
from bench.profile import Profiler
from bench.report import DISTURBED, plot_latency, table, write_json
from bench.runner import Runner, machine_busy, own_cpu
from bench.tracing_cost import noop_seams_ns_per_command, pipeline_cost
from bench.workloads import (
    Env,
    Figures,
    Sizes,
    fanout_baseline,
    latency_figures,
    percentile,
    tracing_modes,
    w1_throughput,
    w2_latency,
    w3_join_storm,
    w4_fanout_service,
    w5_force_mute_service,
    w6_memory,
    w6_start_up_rss,
    w7_one_room_against_many,
    w8_restrictions_by_size,
    w9_room_memory,
    w10_tracing_cost,
)
from testkit.otlp import OtlpReceiverProcess
from testkit.processes import EmulatorProcess

ALL = ("w1", "w2", "w3", "w4", "w5", "w6", "w7", "w8", "w9", "w10")
#: What a run measures unless ``--only`` says otherwise: W10 (tracing's cost) is asked for by name.
DEFAULT = ALL[:-1]
PROFILE_ROUNDS = 5


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run in under a minute")
    parser.add_argument("--partitions", type=int, default=4, help="SIGNALING_PARTITIONS of both (default 4)")
    parser.add_argument("--prefetch", type=int, default=32, help="AMQP_PREFETCH of both (default 32)")
    parser.add_argument("--redis", action="store_true", help="the service keeps state in Redis, not memory")
    parser.add_argument(
        "--only",
        default=None,
        help="comma-separated workloads (default: w1-w9, w10 by name; w1 with --compare)",
    )
    parser.add_argument(
        "--compare",
        metavar="COMMIT",
        help="run the workloads for the working tree and for COMMIT (built under build/), rounds alternating",
    )
    parser.add_argument("--profile", action="store_true", help="py-spy the service during W1, W4 and W8")
    parser.add_argument(
        "--trace",
        action="store_true",
        help="time each W2 command's parts in every process (bench/trace, set up by run.sh)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="rounds of W1, W2, W2b and W8, baseline and service alternating (default 3; 1 with --quick)",
    )
    parser.add_argument("--output", default=str(RESULTS / "latest.json"), help="JSON of every figure")
    args = parser.parse_args(argv)
    if args.only is None:
        args.only = "w1" if args.compare else ",".join(DEFAULT)
    args.only = [w.strip().lower() for w in args.only.split(",") if w.strip()]
    unknown = set(args.only) - set(ALL)
    if unknown:
        parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def combine_throughput(rounds: list[Figures]) -> Figures:
    """W1 over several rounds: the round with the median throughput stands for all (its CPU and core
    shares with it), the median CPU per 1,000 commands is given beside it, and every round is kept."""
    by_rate = sorted(rounds, key=lambda figures: float(figures["commands_per_second"]))
    combined = dict(by_rate[(len(by_rate) - 1) // 2])
    combined["cpu_seconds_per_1000"] = round(
        statistics.median(float(f["cpu_seconds_per_1000"]) for f in rounds), 4
    )
    combined["complete"] = all(f.get("complete", True) for f in rounds)
    combined["other_processes_cores"] = max(float(f.get("other_processes_cores", 0)) for f in rounds)
    combined["rounds"] = [
        {k: f[k] for k in ("commands_per_second", "cpu_seconds_per_1000", "other_processes_cores") if k in f}
        for f in rounds
    ]
    return combined


def combine_latency(rounds: list[Figures]) -> Figures:
    """W2 over several rounds: percentiles over all rounds' samples pooled (a burst in any round counts;
    a single 15 s round's p99 moved between 10 and 120 ms on the shared machine), per-round p99 kept.
    The timeline puts the rounds one after another."""
    samples = sorted(s for f in rounds for s in f["samples_s"])
    timeline: list[tuple[float, float]] = []
    offset = 0.0
    for figures in rounds:
        points = figures["timeline_s"]
        timeline += [(offset + at, latency) for at, latency in points]
        offset += (max((at for at, _ in points), default=0.0)) + 1.0
    combined = dict(rounds[0])
    combined.update(latency_figures(samples))
    combined.update(
        commands=sum(int(f["commands"]) for f in rounds),
        generator_worst_lag_ms=max(float(f["generator_worst_lag_ms"]) for f in rounds),
        complete=all(f.get("complete", True) for f in rounds),
        events_expected=sum(int(f["events_expected"]) for f in rounds),
        events_received=sum(int(f["events_received"]) for f in rounds),
        error_events=sum(int(f["error_events"]) for f in rounds),
        other_processes_cores=max(float(f.get("other_processes_cores", 0)) for f in rounds),
        attempts=max(int(f.get("attempts", 1)) for f in rounds),
        rounds_p99_ms=[f["p99_ms"] for f in rounds],
        samples_s=samples,
        timeline_s=timeline,
    )
    return combined


def _git_commit() -> str:
    """HEAD, with ``+dirty`` and a digest of service/ when the service's files differ from it (the
    service runs from the working tree, so that is what was measured)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],  # noqa: S607
            capture_output=True, text=True, check=True, timeout=5,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "service"],  # noqa: S607
            capture_output=True, text=True, check=True, timeout=5,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not dirty:
        return head
    digest = hashlib.sha1(usedforsecurity=False)
    for path in sorted(Path("service").rglob("*.py")):
        digest.update(path.as_posix().encode() + path.read_bytes())
    return f"{head}+dirty:{digest.hexdigest()[:8]}"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def throughput_and_latency(
    runner: Runner,
    results: dict[str, Any],
    samples: dict[str, dict[str, list[float]]],
    timelines: dict[str, dict[str, list[tuple[float, float]]]],
) -> None:
    """W1 and W2/W2b, ``--rounds`` times each, baseline and service alternating (W2 needs W1's rates)."""
    args, env, sizes = runner.args, runner.env, runner.sizes
    baseline_rate: float | None = None
    service_rate: float | None = None
    rounds = args.rounds
    if "w1" in args.only or "w2" in args.only:
        print(
            f"W1 throughput: {sizes.w1_commands:,} create_new_access_token over {sizes.w1_rooms} rooms"
            f", {rounds} round(s)"
        )
        base_rounds: list[Figures] = []
        svc_rounds: list[Figures] = []
        for number in range(rounds):
            # Profiled once (the first round) is enough, and profiles only the targets it names.
            profile = number == 0
            base_rounds.append(
                runner.on(
                    runner.baseline,
                    lambda t, p=profile: w1_throughput(
                        t, env, sizes, profile_name="w1-baseline" if p else None
                    ),
                )
            )
            if "w1" in args.only:
                svc_rounds.append(
                    runner.on(
                        runner.service,
                        lambda t, p=profile: w1_throughput(t, env, sizes, profile_name="w1" if p else None),
                    )
                )
        base = combine_throughput(base_rounds)
        baseline_rate = float(base["commands_per_second"])
        if svc_rounds:
            svc = combine_throughput(svc_rounds)
            service_rate = float(svc["commands_per_second"])
            results["w1"] = {"service": svc, "baseline": base}
    if "w2" in args.only:
        assert baseline_rate is not None
        for key, rate in (("w2", baseline_rate / 2), ("w2b", (service_rate or 0) / 2)):
            if not rate:
                continue
            print(f"{key.upper()} latency at {rate:,.0f} cmd/s for {sizes.w2_seconds:g}s, {rounds} round(s)")
            sides: dict[str, list[Figures]] = {"baseline": [], "service": []}
            for _ in range(rounds):
                measure = partial(w2_latency, env=env, sizes=sizes, rate=rate)
                sides["baseline"].append(runner.on(runner.baseline, measure))
                sides["service"].append(runner.on(runner.service, measure))
            svc, base = combine_latency(sides["service"]), combine_latency(sides["baseline"])
            samples[key] = {"service": svc.pop("samples_s"), "baseline": base.pop("samples_s")}
            timelines[key] = {"service": svc.pop("timeline_s"), "baseline": base.pop("timeline_s")}
            for side, values in (("service", svc), ("baseline", base)):
                values["percentiles_ms"] = {
                    f"p{q:g}": round(percentile(samples[key][side], q) * 1000, 3)
                    for q in (1, 10, 25, 50, 75, 90, 95, 99, 99.9)
                }
            results[key] = {"service": svc, "baseline": base}


def large_rooms(runner: Runner, results: dict[str, Any]) -> None:
    """W7-W9: whether a command costs more in a room of 10,000 than in a room of 10."""
    args, env, sizes = runner.args, runner.env, runner.sizes
    if "w7" in args.only:
        print(f"W7 {sizes.w7_joins:,} joins into one room against the same over {sizes.w7_rooms:,} rooms")
        base = runner.on(runner.baseline, lambda t: w7_one_room_against_many(t, env, sizes, rounds=1))
        svc = runner.on(runner.service, lambda t: w7_one_room_against_many(t, env, sizes))
        results["w7"] = {"service": svc, "baseline": base}
    if "w8" in args.only:
        small, large = sizes.w8_sizes
        print(
            f"W8 restrictions in rooms of {small:,} and {large:,}, against its bare loop (bench.bare_fanout)"
        )
        profile = "w8" if env.profiler is not None else None
        svc = runner.on(
            runner.service,
            lambda t: w8_restrictions_by_size(t, env, sizes, rounds=args.rounds, profile_name=profile),
        )
        # The baseline of W8 is its bare loop, measured in the same rounds (alternating with the service's).
        results["w8"] = {"service": svc, "baseline": svc.pop("bare")}
        for size, figures in svc["by_size"].items():
            bare, sequential = figures["bare"], figures["bare_sequential"]
            print(
                f"W8 {int(size):,}: service median enable {figures['enable_seconds']:.3f} s; bare loop "
                f"{bare['enable_seconds']:.3f} s (its own part {bare['enable_loop_seconds']:.3f} s): "
                f"{figures['enable_over_bare']:.2f}x (target <= 1.1x); bare loop in the service's order "
                f"(events after LiveKit) {sequential['enable_seconds']:.3f} s: "
                f"{figures['enable_over_bare_sequential']:.2f}x"
            )
            print(
                "  rounds: "
                + "; ".join(
                    f"{name} " + ", ".join(f"{x:.2f}" for x in rounds)
                    for name, rounds in (
                        ("service", figures["rounds_enable_seconds"]),
                        ("bare", bare["rounds_enable_seconds"]),
                        ("in order", sequential["rounds_enable_seconds"]),
                    )
                )
                + "; CPU s of the median enable: service "
                + ", ".join(f"{k} {v}" for k, v in figures["enable_cpu_seconds"].items())
                + "; bare "
                + ", ".join(f"{k} {v}" for k, v in bare["enable_cpu_seconds"].items())
            )
    if "w9" in args.only:
        print(f"W9 memory of one room of {sizes.w9_participants:,}, in-memory store and Redis store")
        in_memory = runner.on(
            partial(runner.service, redis_store=False),
            lambda t: w9_room_memory(t, env, sizes, redis_store=False),
        )
        in_redis = runner.on(
            partial(runner.service, redis_store=True),
            lambda t: w9_room_memory(t, env, sizes, redis_store=True),
        )
        results["w9"] = {"service": in_memory, "service_redis": in_redis}


def tracing_cost(runner: Runner, results: dict[str, Any]) -> None:
    """W10: the service with tracing off, propagating only, and exporting every span to a local OTLP
    receiver, rounds alternating; W1's CPU per 1,000 commands of each, and one large restriction."""
    args, env, sizes = runner.args, runner.env, runner.sizes
    print(
        f"W10 tracing cost: {sizes.w1_commands:,} create_new_access_token from a traced controller, "
        f"tracing off / propagation only / every span exported / one trace in ten exported, "
        f"{args.rounds} round(s) alternating"
    )
    receiver = OtlpReceiverProcess()
    by_mode: dict[str, list[Figures]] = {}
    in_process: dict[str, float] = {}
    try:
        for number in range(args.rounds):
            for name, mode in tracing_modes(receiver.endpoint).items():
                by_mode.setdefault(name, []).append(
                    runner.on(
                        partial(runner.service, settings=mode.env, label=f"tracing {name}"),
                        lambda t, first=number == 0, sampled=mode.sampled: w10_tracing_cost(
                            t, env, sizes, receiver=receiver, fan_out=first and sampled == 1, sampled=sampled
                        ),
                    )
                )
        print(
            f"W10 the pipeline in this process, the four modes alternating, {10 * args.rounds} batches each"
        )
        in_process = asyncio.run(pipeline_cost(receiver.endpoint, rounds=10 * args.rounds))
    finally:
        receiver.stop()
    combined: dict[str, Any] = {}
    for mode, rounds in by_mode.items():
        figures = combine_throughput(rounds)
        figures["fan_out"] = rounds[0].get("fan_out")
        figures["spans_per_command"] = statistics.median(float(f["spans_per_command"]) for f in rounds)
        combined[mode] = figures
    off = float(combined["off"]["cpu_seconds_per_1000"])
    for figures in combined.values():
        figures["cpu_over_off"] = round(float(figures["cpu_seconds_per_1000"]) / off, 3)
    combined["noop"] = {"seams_ns_per_command": noop_seams_ns_per_command()}
    combined["in_process"] = {f"{mode}_us_per_command": value for mode, value in in_process.items()}
    results["w10"] = combined


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
    samples: dict[str, dict[str, list[float]]] = {}
    timelines: dict[str, dict[str, list[tuple[float, float]]]] = {}
    try:
        if args.compare:
            results["compare"] = run_compare(runner, args.compare)
            return {"results": results, "samples": {}, "timelines": {}, "profiles": {}}
        throughput_and_latency(runner, results, samples, timelines)
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
            base = runner.on(runner.baseline, lambda t: w6_start_up_rss(t, env, sizes))
            svc = runner.on(runner.service, lambda t: w6_memory(t, env, sizes))
            results["w6"] = {"service": svc, "baseline": base}
        large_rooms(runner, results)
        if "w10" in args.only:
            tracing_cost(runner, results)
    finally:
        if profiler is not None:
            profiler.stop()
        emulator.stop()
    return {
        "results": results,
        "samples": samples,
        "timelines": timelines,
        "profiles": profiler.outputs if profiler else {},
    }


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    sizes = Sizes.quick() if args.quick else Sizes.full()
    meta = {
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": _git_commit(),
        "mode": "quick" if args.quick else "full",
        "partitions": args.partitions,
        "prefetch": args.prefetch,
        "rounds": args.rounds,
        "store": "redis" if args.redis else "memory",
        "profiled": args.profile,
        "traced": args.trace,
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
    broker = rabbitmq_pid()
    machine_before, ours_before, broker_before = machine_busy(), own_cpu(), cpu_seconds(broker)
    outcome = run(args)
    results = outcome["results"]
    meta["total_seconds"] = round(time.perf_counter() - started, 1)
    if args.compare:
        output = RESULTS / "compare.json"
        write_json(output, {"meta": meta, **results["compare"]})
        print(f"\nJSON: {output}\ntotal {meta['total_seconds']:.0f}s")
        return 0
    broker_cpu = cpu_seconds(broker) - broker_before
    others = (machine_busy() - machine_before) - (own_cpu() - ours_before) - broker_cpu
    # CPU of everything but this run's processes and the broker: other people's tests, mostly.
    meta["other_processes_cores"] = round(others / meta["total_seconds"], 2)
    meta["rabbitmq_cores"] = round(broker_cpu / meta["total_seconds"], 2)
    print()
    print(table(results))
    for side, figures in results.get("w1", {}).items():
        shares = ", ".join(f"{name} {cores:.2f}" for name, cores in figures["cores_used"].items())
        print(f"W1 cores busy during the {side} run (CPU s per wall s; target = the {side}): {shares}")
    for key in ("w2", "w2b"):
        if key in results and len(results[key]["service"].get("rounds_p99_ms", [])) > 1:
            per_round = "; ".join(
                f"{side} " + ", ".join(f"{p99:.1f}" for p99 in results[key][side]["rounds_p99_ms"])
                for side in ("service", "baseline")
            )
            print(f"{key.upper()} p99 of each round (ms): {per_round}; the table pools all rounds' samples")
    if "w1" in results and len(results["w1"]["service"].get("rounds", [])) > 1:
        per_round = "; ".join(
            f"{side} " + ", ".join(f"{r['commands_per_second']:,.0f}" for r in results["w1"][side]["rounds"])
            for side in ("service", "baseline")
        )
        print(f"W1 cmd/s of each round: {per_round}; the table shows the median round")
    incomplete = [
        f"{name}/{side}: {figs.get('events_received')} of {figs.get('events_expected')} events"
        for name, sides in results.items()
        for side, figs in sides.items()
        if not figs.get("complete", True) or figs.get("error_events")
    ]
    for problem in incomplete:
        print(f"WARNING incomplete or error events: {problem}")
    print(
        f"Other processes kept {meta['other_processes_cores']:.2f} cores busy on average during the run "
        f"(RabbitMQ {meta['rabbitmq_cores']:.2f})"
    )
    disturbed_keys = {
        f"{name}/{side}": figures["other_processes_cores"]
        for name, sides in results.items()
        for side, figures in sides.items()
        if figures.get("other_processes_cores", 0) > DISTURBED
    }
    disturbed = [f"{key} ({cores:.2f} cores)" for key, cores in disturbed_keys.items()]
    if disturbed:
        print("WARNING other processes were busy during: " + ", ".join(disturbed) + "; run again when quiet")
    output = os.path.abspath(args.output)
    write_json(Path(output), {"meta": meta, **results})
    print(f"\nJSON: {output}")
    if outcome["samples"]:
        png = RESULTS / "latency.png"
        caption = (
            f"{meta['logical_cores']} shared cores, partitions={args.partitions}, prefetch={args.prefetch}, "
            f"store={meta['store']}, commit {meta['commit']}"
            + (" - DISTURBED by other processes" if any(k.startswith("w2") for k in disturbed_keys) else "")
        )
        what = {"w2": "half the baseline's max (W2)", "w2b": "half the service's max (W2b)"}
        panels = [
            (
                f"{results[key]['service']['offered_rate']:,.0f} cmd/s = {what[key]}",
                samples,
                outcome["timelines"][key],
            )
            for key, samples in outcome["samples"].items()
        ]
        plot_latency(png, panels, caption)
        write_json(
            RESULTS / "latency-samples.json",
            {"unit": "seconds", "sorted": outcome["samples"], "in_publish_order": outcome["timelines"]},
        )
        print(f"PNG:  {png}")
    for name, path in outcome["profiles"].items():
        print(f"profile {name}: {path} (summary: {path.with_name(path.stem + '-summary.txt')})")
    if args.trace:
        from bench.trace.report import DEFAULT, report

        print(f"\nWhere W2's time went (bench/trace, files in {DEFAULT}):\n{report(DEFAULT)}")
    print(f"total {meta['total_seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
