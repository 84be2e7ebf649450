"""The six workloads. Each runs against one fresh target process (service or baseline) on its own
uuid-named topology and returns its figures as a flat dict of numbers (plus raw samples for the plot)."""

from __future__ import annotations

import asyncio
import math
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bench.harness import Target, cpu_seconds, rabbitmq_pid, settled_rss
from bench.loadgen import Command, LoadGenerator, command
from bench.profile import Profiler
from tests.support.emulator import Emulator, allowed_sources, microphone_tracks

TOKEN = {"action": "create_new_access_token"}
JOIN = {"action": "join"}
#: At most this many publishes unconfirmed at once (the controller side's window).
WINDOW = 256

Figures = dict[str, Any]


@dataclass(frozen=True)
class Sizes:
    w1_commands: int
    w1_rooms: int
    w2_seconds: float
    w3_joins: int
    w3_rooms: int
    w4_participants: int
    w5_participants: int
    w6_rooms: int
    w6_per_room: int
    warm_up: int

    @classmethod
    def full(cls) -> Sizes:
        return cls(20_000, 500, 15.0, 10_000, 500, 1_000, 50, 10_000, 10, 300)

    @classmethod
    def quick(cls) -> Sizes:
        return cls(1_000, 100, 2.0, 500, 50, 200, 50, 200, 10, 100)


@dataclass
class Env:
    """What every workload needs besides its target."""

    emulator_url: str
    emulator_pid: int
    profiler: Profiler | None = None


def _tag() -> str:
    return uuid.uuid4().hex[:8]


def _timeout(count: int) -> float:
    """Generous bound on waiting for ``count`` events, so that a stuck run ends instead of hanging."""
    return 30.0 + count / 100


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


async def _warm_up(gen: LoadGenerator, sizes: Sizes, rooms: list[str] | None = None) -> None:
    """Connections, LiveKit keep-alive sessions and code paths warm before anything is measured; with
    ``rooms``, also one command in each of them, as a participant's token refresh comes after the join
    that created the room (first use of a room costs a LiveKit CreateRoom; W3 measures that)."""
    tag = _tag()
    warm = [command(f"warm-{tag}-{i % 20}", f"w{i % 50}", TOKEN) for i in range(sizes.warm_up)]
    warm += [command(room, "p0", TOKEN) for room in rooms or ()]
    target = gen.collector.received + len(warm)
    await gen.publish_all(warm, window=WINDOW)
    await gen.collector.wait_total(target, _timeout(len(warm)))


async def _run_batch(gen: LoadGenerator, commands: list[Command], events: int) -> tuple[float, bool]:
    """Publish everything (bounded window) and wait for ``events`` events: seconds from the first publish
    to the last event, and whether all arrived."""
    target = gen.collector.received + events
    start = time.perf_counter()
    await gen.publish_all(commands, window=WINDOW)
    complete = await gen.collector.wait_total(target, _timeout(events))
    return gen.collector.last_received - start, complete


def _outcome(gen: LoadGenerator, complete: bool, expected: int, base: int) -> Figures:
    return {
        "complete": complete,
        "events_expected": expected,
        "events_received": gen.collector.received - base,
        "error_events": gen.collector.errors(),
        "event_types": dict(gen.collector.types),
    }


# -- W1: throughput and CPU ---------------------------------------------------------------------------


async def w1_throughput(
    target: Target, env: Env, sizes: Sizes, *, profile_name: str | None = None
) -> Figures:
    async with LoadGenerator(target.names) as gen:
        tag = _tag()
        rooms = sizes.w1_rooms
        await _warm_up(gen, sizes, [f"w1-{tag}-{r}" for r in range(rooms)])
        commands = [
            command(f"w1-{tag}-{i % rooms}", f"p{(i // rooms) % 10}", TOKEN) for i in range(sizes.w1_commands)
        ]
        pids = {
            "target": target.pid,
            "emulator": env.emulator_pid,
            "rabbitmq": rabbitmq_pid(),
            "load_generator": os.getpid(),
        }
        if env.profiler is not None and profile_name is not None:
            env.profiler.start(target.pid, profile_name)
        base = gen.collector.received
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        elapsed, complete = await _run_batch(gen, commands, len(commands))
        cpu_after = {name: cpu_seconds(pid) for name, pid in pids.items()}
        if env.profiler is not None and profile_name is not None:
            env.profiler.stop()
        n = len(commands)
        cpu = {name: cpu_after[name] - cpu_before[name] for name in pids}
        return {
            "commands": n,
            "rooms": rooms,
            "seconds": round(elapsed, 3),
            "commands_per_second": round(n / elapsed, 1),
            "cpu_seconds_per_1000": round(cpu["target"] / n * 1000, 4),
            # How the 2 cores were shared over the run (CPU seconds per wall second, 1.0 = one core).
            "cores_used": {name: round(seconds / elapsed, 2) for name, seconds in cpu.items()},
            **_outcome(gen, complete, n, base),
        }


# -- W2: latency at a fixed offered rate --------------------------------------------------------------


def latency_figures(values: Sequence[float]) -> Figures:
    """p50/p95/p99/max/mean in ms of ascending latencies in seconds (one W2 round, or rounds pooled)."""
    return {
        "p50_ms": _ms(percentile(values, 50)),
        "p95_ms": _ms(percentile(values, 95)),
        "p99_ms": _ms(percentile(values, 99)),
        "max_ms": _ms(values[-1]) if values else math.nan,
        "mean_ms": _ms(sum(values) / len(values)) if values else math.nan,
    }


async def w2_latency(target: Target, env: Env, sizes: Sizes, rate: float) -> Figures:
    del env
    async with LoadGenerator(target.names) as gen:
        tag = _tag()
        await _warm_up(gen, sizes, [f"w2-{tag}-{r}" for r in range(500)])
        count = max(100, round(rate * sizes.w2_seconds))
        commands = [command(f"w2-{tag}-{i % 500}", f"p{(i // 500) % 10}", TOKEN) for i in range(count)]
        base = gen.collector.received
        worst_lag = await gen.publish_at_rate(commands, rate)
        complete = await gen.collector.wait_total(base + count, _timeout(count))
        tracks = [gen.collector.tracks[c.message_id] for c in commands]
        first_sent = tracks[0].sent
        # In publish order: (seconds into the run, latency), to see whether slow ones come in bursts.
        timeline = [(t.sent - first_sent, t.last - t.sent) for t in tracks if t.events]
        latencies = sorted(latency for _, latency in timeline)
        return {
            "offered_rate": round(rate, 1),
            "commands": count,
            **latency_figures(latencies),
            "generator_worst_lag_ms": _ms(worst_lag),
            "samples_s": latencies,
            "timeline_s": timeline,
            **_outcome(gen, complete, count, base),
        }


# -- W3: join storm -----------------------------------------------------------------------------------


async def w3_join_storm(target: Target, env: Env, sizes: Sizes) -> Figures:
    del env
    async with LoadGenerator(target.names) as gen:
        await _warm_up(gen, sizes)
        tag = _tag()
        rooms = sizes.w3_rooms
        commands = [command(f"w3-{tag}-{i % rooms}", f"p{i // rooms}", JOIN) for i in range(sizes.w3_joins)]
        base = gen.collector.received
        elapsed, complete = await _run_batch(gen, commands, len(commands))
        return {
            "joins": len(commands),
            "rooms": rooms,
            "seconds": round(elapsed, 3),
            "joins_per_second": round(len(commands) / elapsed, 1),
            **_outcome(gen, complete, len(commands), base),
        }


# -- W4 and W5: one moderator command acting on many participants --------------------------------------


async def _fanout_room(gen: LoadGenerator, view: Emulator, size: int, sources: list[str]) -> tuple[str, str]:
    """A room whose roster has ``size`` joined participants ``<prefix><i>``, each also connected to LiveKit
    (the emulator's bulk route names them ``<prefix><i>`` too) with a track per source."""
    tag = _tag()
    room, prefix = f"fan-{tag}", f"p-{tag}-"
    joins = [command(room, f"{prefix}{i}", JOIN) for i in range(size)]
    _, complete = await _run_batch(gen, joins, size)
    if not complete:
        raise RuntimeError(f"only {gen.collector.received} of {size} joins answered")
    identities = await view.bulk(room, size, prefix, sources)
    assert identities == [f"{prefix}{i}" for i in range(size)], identities[:3]
    return room, prefix


async def _timed_moderation(
    gen: LoadGenerator,
    view: Emulator,
    room: str,
    payload: dict[str, Any],
    *,
    expected: int,
    done: Callable[[Any], bool],
) -> Figures:
    """Publish one moderator command; time until its ``expected`` events arrived and until LiveKit was
    seen in the wanted state (``done`` true for every participant, checked right after the events)."""
    cmd = command(room, "bench-moderator", payload, role="moderator")
    base = gen.collector.received
    start = time.perf_counter()
    await gen.publish(cmd)
    complete = await gen.collector.wait_total(base + expected, _timeout(expected))
    events_at = gen.collector.last_received
    verified = False
    for _ in range(50):
        participants = await view.participants(room)
        if participants and all(done(p) for p in participants.values()):
            verified = True
            break
        await asyncio.sleep(0.02)
    verified_at = time.perf_counter()
    track = gen.collector.tracks.get(cmd.message_id)
    return {
        "participants": expected,
        "events_seconds": round(events_at - start, 4),
        # The target applies to this one: events in AND LiveKit checked (includes one ListParticipants).
        "seconds": round(verified_at - start, 4),
        "livekit_verified": verified,
        "correlated_events": track.events if track else 0,
        **_outcome(gen, complete, expected, base),
    }


def _no_microphone(info: Any) -> bool:
    return "microphone" not in allowed_sources(info)


def _microphone_muted(info: Any) -> bool:
    tracks = microphone_tracks(info)
    return bool(tracks) and all(t.muted for t in tracks)


async def w4_fanout_service(
    target: Target, env: Env, sizes: Sizes, *, profile_name: str | None = None, profile_rounds: int = 0
) -> Figures:
    size = sizes.w4_participants
    async with LoadGenerator(target.names) as gen, Emulator(env.emulator_url) as view:
        await _warm_up(gen, sizes)
        setup_start = time.perf_counter()
        room, _ = await _fanout_room(gen, view, size, ["microphone"])
        setup = time.perf_counter() - setup_start
        if env.profiler is not None and profile_name is not None:
            env.profiler.start(target.pid, profile_name)
        enable = {"action": "enable_microphone_restrictions", "unrestricted_participants": []}
        figures = await _timed_moderation(gen, view, room, enable, expected=size, done=_no_microphone)
        # Profiling only: more rounds of disable + enable, so the profile has enough samples.
        for _ in range(profile_rounds):
            disable = {"action": "disable_microphone_restrictions"}
            await _timed_moderation(gen, view, room, disable, expected=size, done=lambda _: True)
            await _timed_moderation(gen, view, room, enable, expected=size, done=_no_microphone)
        if env.profiler is not None and profile_name is not None:
            env.profiler.stop()
        return {**figures, "setup_seconds_1000_joins_one_room": round(setup, 3)}


async def w5_force_mute_service(target: Target, env: Env, sizes: Sizes) -> Figures:
    size = sizes.w5_participants
    async with LoadGenerator(target.names) as gen, Emulator(env.emulator_url) as view:
        await _warm_up(gen, sizes)
        room, prefix = await _fanout_room(gen, view, size, ["microphone"])
        mute = {"action": "force_mute", "participants": [f"{prefix}{i}" for i in range(size)]}
        return await _timed_moderation(gen, view, room, mute, expected=size, done=_microphone_muted)


async def fanout_baseline(target: Target, env: Env, sizes: Sizes, size: int) -> Figures:
    """The baseline's share of W4/W5: one command, ``size`` confirmed events (no LiveKit, no roster)."""
    del env
    async with LoadGenerator(target.names) as gen:
        await _warm_up(gen, sizes)
        tag = _tag()
        extra = {"bench_fanout": {"prefix": f"p-{tag}-", "count": size}}
        cmd = command(f"fan-{tag}", "bench-moderator", {"action": "fanout"}, role="moderator", extra=extra)
        base = gen.collector.received
        start = time.perf_counter()
        await gen.publish(cmd)
        complete = await gen.collector.wait_total(base + size, _timeout(size))
        elapsed = gen.collector.last_received - start
        return {"participants": size, "events_seconds": round(elapsed, 4), "seconds": round(elapsed, 4)} | (
            _outcome(gen, complete, size, base)
        )


# -- W6: memory ---------------------------------------------------------------------------------------


async def w6_memory(target: Target, env: Env, sizes: Sizes) -> Figures:
    del env
    rss_start = await settled_rss(target.pid)
    async with LoadGenerator(target.names) as gen:
        await _warm_up(gen, sizes)  # first-use costs, outside the second figure
        rss_warm = await settled_rss(target.pid)
        tag = _tag()
        rooms, per_room = sizes.w6_rooms, sizes.w6_per_room
        total = rooms * per_room
        commands = [command(f"w6-{tag}-{i % rooms}", f"p{i // rooms}", JOIN) for i in range(total)]
        base = gen.collector.received
        elapsed, complete = await _run_batch(gen, commands, total)
        outcome = _outcome(gen, complete, total, base)
    rss_end = await settled_rss(target.pid, seconds=2.0)
    return {
        "rooms": rooms,
        "participants": total,
        "seconds": round(elapsed, 3),
        "rss_start_bytes": rss_start,
        "rss_after_warm_up_bytes": rss_warm,
        "rss_end_bytes": rss_end,
        "bytes_per_participant": round((rss_end - rss_start) / total, 1),
        "bytes_per_participant_after_warm_up": round((rss_end - rss_warm) / total, 1),
        **outcome,
    }


async def w6_start_up_rss(target: Target, env: Env, sizes: Sizes) -> Figures:
    """The baseline's share of W6: it keeps no state, so only its RSS after start-up and warm-up."""
    del env
    rss_start = await settled_rss(target.pid)
    async with LoadGenerator(target.names) as gen:
        await _warm_up(gen, sizes)
    return {"rss_start_bytes": rss_start, "rss_after_warm_up_bytes": await settled_rss(target.pid)}
