"""The workloads. Each runs against one fresh target process (service or baseline) on its own
uuid-named topology and returns its figures as a flat dict of numbers (plus raw samples for the plot)."""

from __future__ import annotations

import asyncio
import math
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as redis

from bench.bare_fanout import BareFanoutProcess
from bench.harness import Target, cpu_seconds, rabbitmq_pid, settled_rss
from bench.loadgen import Command, LoadGenerator, command
from bench.profile import Profiler
from testkit.emulator import Emulator, allowed_sources, microphone_tracks
from testkit.otlp import OtlpReceiverProcess
from testkit.processes import REDIS_URL

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
    #: W7: joins, and the rooms they are spread over in the reference run.
    w7_joins: int
    w7_rooms: int
    #: W8: the room sizes whose restrictions are compared, smaller first.
    w8_sizes: tuple[int, int]
    #: W9: participants of the one room whose memory is measured.
    w9_participants: int

    @classmethod
    def full(cls) -> Sizes:
        return cls(
            20_000, 500, 15.0, 10_000, 500, 1_000, 50, 10_000, 10, 300, 10_000, 1_000, (1_000, 10_000), 10_000
        )

    @classmethod
    def quick(cls) -> Sizes:
        return cls(1_000, 100, 2.0, 500, 50, 200, 50, 200, 10, 100, 1_000, 100, (100, 1_000), 1_000)


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
    pids: dict[str, int | None] | None = None,
) -> Figures:
    """Publish one moderator command; time until its ``expected`` events arrived and until LiveKit was
    seen in the wanted state (``done`` true for every participant, checked right after the events);
    with ``pids``, also the CPU seconds each of those processes spent meanwhile."""
    cmd = command(room, "bench-moderator", payload, role="moderator")

    async def publish() -> str:
        await gen.publish(cmd)
        return cmd.message_id

    return await _timed_fanout(gen, view, room, publish, expected=expected, done=done, pids=pids)


async def _timed_fanout(
    gen: LoadGenerator,
    view: Emulator,
    room: str,
    trigger: Callable[[], Awaitable[str]],
    *,
    expected: int,
    done: Callable[[Any], bool],
    pids: dict[str, int | None] | None = None,
    settled: Callable[[], Awaitable[float]] | None = None,
) -> Figures:
    """What ``_timed_moderation`` times, for any ``trigger`` starting a fan-out (a command published, or
    the bare loop's job sent) and returning the correlation id its events carry."""
    base = gen.collector.received
    cpu_before = {name: cpu_seconds(pid) for name, pid in (pids or {}).items()}
    start = time.perf_counter()
    correlation_id = await trigger()
    complete = await gen.collector.wait_total(base + expected, _timeout(expected))
    events_at = gen.collector.last_received
    extra: Figures = {}
    if settled is not None:
        # The bare loop's events may all be in before its LiveKit updates are answered: polling LiveKit
        # meanwhile would load the emulator it is measured against, so LiveKit is checked once its
        # updates are done, as it is after the service's events (which come after its updates).
        extra["loop_seconds"] = round(await settled(), 4)
    verified = False
    for _ in range(50):
        participants = await view.participants(room)
        if participants and all(done(p) for p in participants.values()):
            verified = True
            break
        await asyncio.sleep(0.02)
    verified_at = time.perf_counter()
    track = gen.collector.tracks.get(correlation_id)
    cpu = {name: round(cpu_seconds(pid) - cpu_before[name], 3) for name, pid in (pids or {}).items()}
    return {
        **({"cpu_seconds": cpu} if cpu else {}),
        "participants": expected,
        "events_seconds": round(events_at - start, 4),
        # The target applies to this one: events in AND LiveKit checked (includes one ListParticipants).
        "seconds": round(verified_at - start, 4),
        "livekit_verified": verified,
        "correlated_events": track.events if track else 0,
        **extra,
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


# -- W7: a room of 10,000 against the same joins over many rooms --------------------------------------


def _arrival_quarters(gen: LoadGenerator, commands: list[Command], start: float) -> Figures:
    """How long the first and the last quarter of the answers took (sorted by arrival): equal when a
    join costs the same in a full room as in an empty one."""
    tracks = gen.collector.tracks
    arrivals = sorted(tracks[c.message_id].last for c in commands if c.message_id in tracks)
    if len(arrivals) < 4:
        return {}
    quarter = len(arrivals) // 4
    return {
        "first_quarter_seconds": round(arrivals[quarter - 1] - start, 3),
        "last_quarter_seconds": round(arrivals[-1] - arrivals[-quarter - 1], 3),
    }


async def _timed_joins(gen: LoadGenerator, commands: list[Command]) -> Figures:
    base = gen.collector.received
    start = time.perf_counter()
    elapsed, complete = await _run_batch(gen, commands, len(commands))
    return {
        "seconds": round(elapsed, 3),
        **_arrival_quarters(gen, commands, start),
        **_outcome(gen, complete, len(commands), base),
    }


async def w7_one_room_against_many(target: Target, env: Env, sizes: Sizes, *, rounds: int = 2) -> Figures:
    """``w7_joins`` joins spread over ``w7_rooms`` rooms, and the same number into one room, on one
    process; ``rounds`` times each, the order alternating (spread first, then one room first) so that
    neither always runs on a warmer process. Every room and participant is new in every run."""
    del env
    n, rooms = sizes.w7_joins, sizes.w7_rooms
    runs: dict[str, list[Figures]] = {"spread": [], "one_room": []}
    async with LoadGenerator(target.names) as gen:
        await _warm_up(gen, sizes)
        for number in range(rounds):
            order = ("spread", "one_room") if number % 2 == 0 else ("one_room", "spread")
            for kind in order:
                tag = _tag()
                if kind == "spread":
                    commands = [command(f"w7-{tag}-{i % rooms}", f"p{i // rooms}", JOIN) for i in range(n)]
                else:
                    commands = [command(f"w7-{tag}-one", f"p{i}", JOIN) for i in range(n)]
                runs[kind].append(await _timed_joins(gen, commands))
    spread = statistics.mean(float(f["seconds"]) for f in runs["spread"])
    one_room = statistics.mean(float(f["seconds"]) for f in runs["one_room"])
    return {
        "joins": n,
        "rooms": rooms,
        "spread_seconds": round(spread, 3),
        "one_room_seconds": round(one_room, 3),
        "one_room_over_spread": round(one_room / spread, 3),
        "runs": runs,
        "complete": all(f["complete"] for fs in runs.values() for f in fs),
        "error_events": sum(int(f["error_events"]) for fs in runs.values() for f in fs),
    }


# -- W8: restrictions in rooms of 1,000 and 10,000 ----------------------------------------------------


def _microphone_allowed(info: Any) -> bool:
    return "microphone" in allowed_sources(info)


def _median_round(rounds: list[Figures], key: str = "seconds") -> Figures:
    return sorted(rounds, key=lambda f: float(f[key]))[len(rounds) // 2]


async def _bare_round(
    gen: LoadGenerator,
    view: Emulator,
    bare: BareFanoutProcess,
    *,
    room: str,
    prefix: str,
    size: int,
    enable: bool,
    sequential: bool,
    pids: dict[str, int | None],
) -> Figures:
    """One fan-out of the bare loop, timed as the service's command is (events in, LiveKit checked)."""
    correlation_id = uuid.uuid4().hex

    async def send() -> str:
        bare.start(
            room,
            enable=enable,
            prefix=prefix,
            count=size,
            correlation_id=correlation_id,
            sequential=sequential,
        )
        return correlation_id

    done = _no_microphone if enable else _microphone_allowed
    return await _timed_fanout(
        gen, view, room, send, expected=size, done=done, pids=pids, settled=bare.finished
    )


_ENABLE = {"action": "enable_microphone_restrictions", "unrestricted_participants": []}
_DISABLE = {"action": "disable_microphone_restrictions"}


@dataclass
class _W8Size:
    """One room size of W8: the service's room and, with the bare loop, a room of its own."""

    target: Target
    env: Env
    gen: LoadGenerator
    view: Emulator
    bare: BareFanoutProcess | None
    size: int
    profile_name: str | None

    async def setup(self) -> float:
        started = time.perf_counter()
        self.room, _ = await _fanout_room(self.gen, self.view, self.size, ["microphone"])
        setup = time.perf_counter() - started
        self.bare_room, self.bare_prefix = f"bare-{_tag()}", f"b-{_tag()}-"
        if self.bare is not None:
            await self.view.bulk(self.bare_room, self.size, self.bare_prefix, ["microphone"])
            await self.bare.prepare(self.bare_room)
        self.common = {
            "emulator": self.env.emulator_pid,
            "rabbitmq": rabbitmq_pid(),
            "load_generator": os.getpid(),
        }
        return setup

    async def one(self, side: str, action: str, number: int) -> Figures:
        """One timed enable or disable, by the service or by the bare loop; the service's enables are
        profiled (all rounds into one file) when asked."""
        enable = action == "enable"
        if side in {"bare", "bare_sequential"}:
            assert self.bare is not None
            return await _bare_round(
                self.gen, self.view, self.bare, room=self.bare_room, prefix=self.bare_prefix,
                size=self.size, enable=enable, sequential=side == "bare_sequential",
                pids={"target": self.bare.pid, **self.common},
            )  # fmt: skip
        profiler = self.env.profiler if enable and self.profile_name is not None else None
        if profiler is not None and self.profile_name is not None:
            profiler.start(self.target.pid, self.profile_name, append=number > 0)
        payload, done = (_ENABLE, _no_microphone) if enable else (_DISABLE, _microphone_allowed)
        figures = await _timed_moderation(
            self.gen, self.view, self.room, payload, expected=self.size, done=done,
            pids={"target": self.target.pid, **self.common},
        )  # fmt: skip
        if profiler is not None:
            profiler.stop()
        return figures


def _w8_figures(size: int, setup: float, sides: dict[str, dict[str, list[Figures]]]) -> Figures:
    enables, disables = sides["service"]["enable"], sides["service"]["disable"]
    figures: Figures = {
        "participants": size,
        "setup_seconds": round(setup, 3),
        "enable_seconds": statistics.median(float(f["seconds"]) for f in enables),
        "enable_events_seconds": statistics.median(float(f["events_seconds"]) for f in enables),
        "disable_seconds": statistics.median(float(f["seconds"]) for f in disables),
        # CPU seconds per process of the median enable round (the 2 cores are shared by all).
        "enable_cpu_seconds": _median_round(enables)["cpu_seconds"],
        "rounds_enable_seconds": [f["seconds"] for f in enables],
        "rounds_disable_seconds": [f["seconds"] for f in disables],
        "livekit_verified": all(f["livekit_verified"] for f in enables + disables),
        "complete": all(f["complete"] for f in enables + disables),
        "error_events": sum(int(f["error_events"]) for f in enables + disables),
    }
    for kind in ("bare", "bare_sequential"):
        if kind in sides:
            figures[kind] = _bare_figures(sides[kind])
            bare_seconds = float(figures[kind]["enable_seconds"])
            figures[f"enable_over_{kind}"] = round(float(figures["enable_seconds"]) / bare_seconds, 3)
    return figures


def _bare_figures(side: dict[str, list[Figures]]) -> Figures:
    bare_enables, bare_disables = side["enable"], side["disable"]
    return {
        "enable_seconds": statistics.median(float(f["seconds"]) for f in bare_enables),
        "enable_loop_seconds": statistics.median(float(f["loop_seconds"]) for f in bare_enables),
        "disable_seconds": statistics.median(float(f["seconds"]) for f in bare_disables),
        "enable_cpu_seconds": _median_round(bare_enables)["cpu_seconds"],
        "rounds_enable_seconds": [f["seconds"] for f in bare_enables],
        "livekit_verified": all(f["livekit_verified"] for f in bare_enables + bare_disables),
        "complete": all(f["complete"] for f in bare_enables + bare_disables),
    }


async def w8_restrictions_by_size(
    target: Target,
    env: Env,
    sizes: Sizes,
    *,
    rounds: int = 3,
    profile_name: str | None = None,
    bare_loop: bool = True,
) -> Figures:
    """Per room size: a room of that many joined participants, all connected to LiveKit with a
    microphone track; then ``rounds`` times enable restrictions (timed until every participant has the
    event and LiveKit shows nobody may publish a microphone) and disable them again (timed the same way,
    until everybody may). The larger room's enables are profiled when asked.

    With ``bare_loop``, W8's own limit in the same run: ``bench.bare_fanout`` (its own process) does the
    same fan-out in a room of the same size on the same emulator, publishing to the same event exchange,
    timed the same way; its rounds alternate with the service's (service first in odd rounds)."""
    by_size: dict[str, Figures] = {}
    bare = BareFanoutProcess(env.emulator_url, target.names.event_exchange) if bare_loop else None
    try:
        async with LoadGenerator(target.names) as gen, Emulator(env.emulator_url) as view:
            await _warm_up(gen, sizes)
            for size in sizes.w8_sizes:
                profiled = profile_name if size == max(sizes.w8_sizes) else None
                one_size = _W8Size(target, env, gen, view, bare, size, profiled)
                setup = await one_size.setup()
                kinds = ("service", "bare", "bare_sequential") if bare is not None else ("service",)
                sides: dict[str, dict[str, list[Figures]]] = {
                    side: {"enable": [], "disable": []} for side in kinds
                }
                for number in range(rounds):
                    # The service first in odd rounds, last in even ones.
                    order = kinds if number % 2 == 0 else kinds[::-1]
                    for action in ("enable", "disable"):
                        for side in order:
                            figures = await one_size.one(side, action, number)
                            if not figures["complete"] or not figures["livekit_verified"]:
                                print(
                                    f"  W8 {size:,} round {number + 1}, {side} {action}: "
                                    f"{figures['events_received']:,} of {size:,} events in "
                                    f"{figures['events_seconds']:.1f} s, "
                                    f"LiveKit verified: {figures['livekit_verified']}",
                                    flush=True,
                                )
                            sides[side][action].append(figures)
                by_size[str(size)] = _w8_figures(size, setup, sides)
    finally:
        if bare is not None:
            bare.stop()
    small, large = (by_size[str(size)] for size in sizes.w8_sizes)
    bare_figures: Figures = {}
    if bare_loop:
        small_bare, large_bare = small["bare"], large["bare"]
        bare_figures = {
            "small_seconds": small_bare["enable_seconds"],
            "large_seconds": large_bare["enable_seconds"],
            "large_over_small": round(
                float(large_bare["enable_seconds"]) / float(small_bare["enable_seconds"]), 2
            ),
            "large_cpu_seconds": large_bare["enable_cpu_seconds"],
            "livekit_verified": small_bare["livekit_verified"] and large_bare["livekit_verified"],
            "complete": small_bare["complete"] and large_bare["complete"],
        }
    return {
        **({"bare": bare_figures} if bare_figures else {}),
        "sizes": list(sizes.w8_sizes),
        "by_size": by_size,
        "small_seconds": small["enable_seconds"],
        "large_seconds": large["enable_seconds"],
        "large_events_seconds": large["enable_events_seconds"],
        "large_cpu_seconds": large["enable_cpu_seconds"],
        "large_over_small": round(float(large["enable_seconds"]) / float(small["enable_seconds"]), 2),
        "small_over_bare": small.get("enable_over_bare"),
        "large_over_bare": large.get("enable_over_bare"),
        "livekit_verified": small["livekit_verified"] and large["livekit_verified"],
        "complete": small["complete"]
        and large["complete"]
        and all(s.get("bare", {}).get("complete", True) for s in (small, large)),
        "error_events": small["error_events"] + large["error_events"],
    }


# -- W9: memory of one room of 10,000 -----------------------------------------------------------------


async def _redis_memory(prefix: str, room: str) -> Figures:
    """``MEMORY USAGE`` (exact: ``SAMPLES 0``) of the room's keys, and of the processed-command keys."""
    client = redis.from_url(REDIS_URL)
    try:
        room_bytes = 0
        room_keys = 0
        async for key in client.scan_iter(match=f"{prefix}:room:{room}*", count=1000):
            room_bytes += int(await client.memory_usage(key, samples=0) or 0)
            room_keys += 1
        message_bytes = 0
        message_keys = 0
        async for key in client.scan_iter(match=f"{prefix}:msg:*", count=1000):
            message_bytes += int(await client.memory_usage(key, samples=0) or 0)
            message_keys += 1
    finally:
        await client.aclose()
    return {
        "redis_room_keys": room_keys,
        "redis_room_bytes": room_bytes,
        "redis_processed_keys": message_keys,
        "redis_processed_bytes": message_bytes,
    }


async def w9_room_memory(target: Target, env: Env, sizes: Sizes, *, redis_store: bool) -> Figures:
    """``w9_participants`` joins into one room: the process's RSS growth per participant and, with the
    Redis store, ``MEMORY USAGE`` of the room's keys per participant."""
    del env
    rss_start = await settled_rss(target.pid)
    async with LoadGenerator(target.names) as gen:
        await _warm_up(gen, sizes)
        rss_warm = await settled_rss(target.pid)
        room = f"w9-{_tag()}"
        n = sizes.w9_participants
        commands = [command(room, f"{uuid.uuid4()}", JOIN) for _ in range(n)]
        figures = await _timed_joins(gen, commands)
    rss_end = await settled_rss(target.pid, seconds=2.0)
    figures |= {
        "participants": n,
        "store": "redis" if redis_store else "memory",
        "rss_after_warm_up_bytes": rss_warm,
        "rss_end_bytes": rss_end,
        "rss_start_bytes": rss_start,
        "process_bytes_per_participant": round((rss_end - rss_warm) / n, 1),
    }
    if redis_store:
        memory = await _redis_memory(target.names.redis_prefix, room)
        figures |= memory
        figures["redis_bytes_per_participant"] = round(memory["redis_room_bytes"] / n, 1)
        figures["redis_processed_bytes_per_command"] = round(
            memory["redis_processed_bytes"] / max(1, memory["redis_processed_keys"]), 1
        )
    return figures


# -- W10: what tracing costs --------------------------------------------------------------------------


@dataclass(frozen=True)
class TracingMode:
    """How W10 runs the service, and which fraction of the controller's traces are sampled."""

    env: dict[str, str]
    sampled: float = 1.0


def tracing_modes(endpoint: str) -> dict[str, TracingMode]:
    """The tracing modes W10 compares."""
    # Batches leave every 200 ms (the SDK's default is 5 s), so that the spans of the measured commands
    # are exported, and their export counted, before W10 reads the CPU.
    export = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200"}
    return {
        "off": TracingMode({"OTEL_SDK_DISABLED": "true"}),
        "propagation": TracingMode({"OTEL_TRACES_EXPORTER": "none"}),
        "export": TracingMode(export),
        # The controller samples one trace in ten; the service follows (parent-based, its default).
        "export_sampled_10": TracingMode(export, sampled=0.1),
    }


async def w10_tracing_cost(
    target: Target,
    env: Env,
    sizes: Sizes,
    *,
    receiver: OtlpReceiverProcess,
    fan_out: bool,
    sampled: float = 1.0,
) -> Figures:
    """W1's load from a traced controller (every command with a ``traceparent`` of its own, ``sampled``):
    CPU seconds of the service per 1,000 commands, counted until the receiver got every span of them;
    with ``fan_out``, also one restriction in a room of W8's larger size: its spans and the service's
    CPU for it."""
    generator = LoadGenerator(target.names, traced=True, sampled=sampled)
    async with generator as gen, Emulator(env.emulator_url) as view:
        tag = _tag()
        rooms = sizes.w1_rooms
        await _warm_up(gen, sizes, [f"w10-{tag}-{r}" for r in range(rooms)])
        count = sizes.w1_commands
        commands = [command(f"w10-{tag}-{i % rooms}", f"p{(i // rooms) % 10}", TOKEN) for i in range(count)]
        spans_before = await receiver.settled()
        base = gen.collector.received
        cpu_before = cpu_seconds(target.pid)
        elapsed, complete = await _run_batch(gen, commands, len(commands))
        spans = await receiver.settled() - spans_before
        cpu = cpu_seconds(target.pid) - cpu_before
        n = len(commands)
        figures: Figures = {
            "commands": n,
            "commands_per_second": round(n / elapsed, 1),
            "cpu_seconds_per_1000": round(cpu / n * 1000, 4),
            "spans": spans,
            "spans_per_command": round(spans / n, 3),
            **_outcome(gen, complete, n, base),
        }
        if fan_out:
            size = max(sizes.w8_sizes)
            room, _ = await _fanout_room(gen, view, size, ["microphone"])
            enable = {"action": "enable_microphone_restrictions", "unrestricted_participants": []}
            spans_before = await receiver.settled()
            cpu_before = cpu_seconds(target.pid)
            timed = await _timed_moderation(gen, view, room, enable, expected=size, done=_no_microphone)
            figures["fan_out"] = {
                "participants": size,
                "seconds": timed["seconds"],
                "spans": await receiver.settled() - spans_before,
                "cpu_seconds": round(cpu_seconds(target.pid) - cpu_before, 3),
                "livekit_verified": timed["livekit_verified"],
                "complete": timed["complete"],
            }
        return figures
