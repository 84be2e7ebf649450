"""What reconciliation with LiveKit costs while there is nothing to repair, and what one large room costs.

``.venv/bin/python -m bench.reconcile [--rooms 1000] [--participants 10] [--interval 10] [--window 30]
[--rounds 2] [--large 10000] [--redis]`` (``--redis``: the service keeps its state in Redis, whose
reads a check adds: one pipeline per pass, one ``HMGET`` per room and roster page)

**Idle cost.** ``--rooms`` rooms with microphone restrictions, each with ``--participants`` joined
participants who are also connected to the LiveKit emulator with exactly what the restriction allows
(nothing to repair), on a service that reconciles every ``--interval`` seconds and, alternating round
by round on fresh processes, the same service with reconciliation off (``RECONCILE_INTERVAL_SECONDS=0``,
the baseline). Over ``--window`` seconds of quiet (after the first pass): the LiveKit calls the service
made (counted by the emulator), per second and per 1,000 restricted rooms; the CPU of the service and of
the emulator (cores, and ms per room check); the rooms checked and the repairs made (none expected).

**One large room.** The check of a room of ``--large`` participants, all in line, in this process
against the emulator process: ListParticipants (one answer: LiveKit has no paging) into the adapter's
compact views, the roster read in pages from the in-memory store, the plan; the time of each and the
Python memory the views hold (tracemalloc), with the answer's size on the wire.

Prints a table; all figures in ``bench/results/reconcile.json``. ``docs/operations/reconciliation.md``
quotes them and does the arithmetic for 100,000 participants.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import tracemalloc
import uuid
from typing import Any

import aiohttp
from livekit.protocol.room import ListParticipantsRequest

from bench.harness import RESULTS, ServiceTarget, cpu_seconds
from bench.loadgen import LoadGenerator, command
from livekit_signaling.domain.permissions import PublishPolicy
from livekit_signaling.domain.state import RosterEntry
from livekit_signaling.livekit.adapter import LiveKitAdapter
from livekit_signaling.reconcile.room_check import RoomChecker
from livekit_signaling.store.memory import MemoryStateStore
from livekit_signaling.telemetry.metrics import Metrics
from testkit.processes import API_KEY, API_SECRET, EmulatorProcess

PARTITIONS = 4
RESTRICTED_SOURCES = ["camera", "screen_share", "screen_share_audio"]
ENABLE = {"action": "enable_microphone_restrictions", "unrestricted_participants": []}


async def _emulator(session: aiohttp.ClientSession, url: str, path: str, body: Any = None) -> Any:
    if body is None:
        async with session.get(f"{url}/_emulator/{path}") as response:
            return await response.json()
    async with session.post(f"{url}/_emulator/{path}", json=body) as response:
        response.raise_for_status()
        return await response.json()


async def _metric(session: aiohttp.ClientSession, port: int, name: str, **labels: str) -> float:
    async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
        text = await response.text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            series, _, value = line.rpartition(" ")
            if series.split("{")[0] == name:
                total += float(value)
    return total


async def _idle_round(
    emulator: EmulatorProcess,
    *,
    interval: float,
    rooms: int,
    participants: int,
    window: float,
    use_redis: bool,
) -> dict[str, Any]:
    """One service (reconciling every ``interval`` s, or not at all with 0) over restricted rooms in line."""
    target = ServiceTarget(
        emulator.url,
        PARTITIONS,
        32,
        use_redis=use_redis,
        label=f"interval {interval:g}",
        settings={"RECONCILE_INTERVAL_SECONDS": str(interval)},
    )
    await asyncio.to_thread(target.start)
    port = target._process.port
    try:
        names = [f"bench-{uuid.uuid4().hex[:8]}-{n}" for n in range(rooms)]
        async with LoadGenerator(target.names) as generator, aiohttp.ClientSession() as session:
            commands = [
                command(room, f"p{i}", {"action": "join"}) for room in names for i in range(participants)
            ]
            commands += [command(room, "mod", ENABLE, role="moderator") for room in names]
            await generator.publish_all(commands)
            answered = rooms * participants + rooms * participants  # joins, then everybody told
            if not await generator.collector.wait_total(answered, 300):
                raise RuntimeError("the rooms were not set up")
            for room in names:  # everybody connected with exactly what the restriction allows
                await _emulator(
                    session,
                    emulator.url,
                    "participants/bulk",
                    {
                        "room": room,
                        "count": participants,
                        "prefix": "p",
                        "can_publish_sources": RESTRICTED_SOURCES,
                    },
                )
            await asyncio.sleep(interval + 1 if interval else 1)  # past the first pass
            await _emulator(session, emulator.url, "calls/clear", {})
            checked = await _metric(session, port, "livekit_signaling_reconcile_rooms_checked_total")
            repairs = await _metric(session, port, "livekit_signaling_reconcile_repairs_total")
            service_cpu, emulator_cpu = cpu_seconds(target.pid), cpu_seconds(emulator.process.pid)
            started = time.monotonic()
            await asyncio.sleep(window)
            elapsed = time.monotonic() - started
            service_cpu = cpu_seconds(target.pid) - service_cpu
            emulator_cpu = cpu_seconds(emulator.process.pid) - emulator_cpu
            calls = (await _emulator(session, emulator.url, "calls"))["calls"]
            checked = (
                await _metric(session, port, "livekit_signaling_reconcile_rooms_checked_total") - checked
            )
            repairs = await _metric(session, port, "livekit_signaling_reconcile_repairs_total") - repairs
            for room in names:
                await _emulator(session, emulator.url, "forget", {"room": room})
    finally:
        await asyncio.to_thread(target.stop)
    per_thousand = 1000 / rooms
    return {
        "interval_seconds": interval,
        "seconds": round(elapsed, 1),
        "livekit_calls_per_second": round(len(calls) / elapsed, 1),
        "livekit_calls_per_second_per_1000_rooms": round(len(calls) / elapsed * per_thousand, 1),
        "list_participants": calls.count("ListParticipants"),
        "update_participant": calls.count("UpdateParticipant"),
        "rooms_checked": int(checked),
        "repairs": int(repairs),
        "service_cores": round(service_cpu / elapsed, 4),
        "service_cores_per_1000_rooms": round(service_cpu / elapsed * per_thousand, 4),
        "emulator_cores": round(emulator_cpu / elapsed, 4),
        "service_cpu_ms_per_room_check": round(service_cpu * 1000 / checked, 3) if checked else None,
    }


async def _large_room(emulator: EmulatorProcess, participants: int, repeats: int = 5) -> dict[str, Any]:
    """One check of a room of ``participants``, all in line, timed by part, in this process."""
    room = f"bench-large-{uuid.uuid4().hex[:8]}"
    store = MemoryStateStore(dedup_window_seconds=60, room_idle_seconds=3600)
    state = await store.load(room)
    identities = [f"p{i}" for i in range(participants)]
    entry = RosterEntry(role="user", kind="user")
    for identity in identities:
        state.participants[identity] = entry
        await store.save_entry(room, state, identity)
    state.decisions.microphone_restrictions = []
    await store.save_decisions(room, state)
    async with aiohttp.ClientSession() as session:
        await _emulator(
            session,
            emulator.url,
            "participants/bulk",
            {"room": room, "count": participants, "prefix": "p", "can_publish_sources": RESTRICTED_SOURCES},
        )
        adapter = LiveKitAdapter(
            url=emulator.url,
            api_key=API_KEY,
            api_secret=API_SECRET,
            request_timeout_seconds=10,
            attempts=1,
            max_concurrent_requests=16,
            metrics=Metrics(),
        )
        await adapter.start()
        try:
            checker = RoomChecker(
                livekit=adapter, store=store, policy=PublishPolicy(), disconnect_unknown=True
            )
            lists, checks = [], []
            for _ in range(repeats):
                started = time.perf_counter()
                await adapter.list_participants(room)
                lists.append(time.perf_counter() - started)
                started = time.perf_counter()
                check = await checker.check(room)
                checks.append(time.perf_counter() - started)
                assert check.outcome == "in_line", check
            tracemalloc.start()
            views = await adapter.list_participants(room)
            held, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            del views
            answer = await adapter._room_api(room).list_participants(ListParticipantsRequest(room=room))
            wire = answer.ByteSize()
        finally:
            await adapter.close()
            await _emulator(session, emulator.url, "forget", {"room": room})
    return {
        "participants": participants,
        "answer_bytes": wire,
        "list_participants_ms": round(statistics.median(lists) * 1000, 1),
        "whole_check_ms": round(statistics.median(checks) * 1000, 1),
        "views_python_bytes_per_participant": round(held / participants),
        "peak_python_bytes_while_listing": peak,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rooms", type=int, default=1000)
    parser.add_argument("--participants", type=int, default=10, help="per room")
    parser.add_argument("--interval", type=float, default=10.0, help="RECONCILE_INTERVAL_SECONDS")
    parser.add_argument("--window", type=float, default=30.0, help="seconds measured per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--large", type=int, default=10_000, help="participants of the large room")
    parser.add_argument("--redis", action="store_true", help="the service keeps its state in Redis")
    args = parser.parse_args()
    emulator = EmulatorProcess()
    results: dict[str, Any] = {"arguments": vars(args), "rounds": []}
    try:
        for number in range(args.rounds):
            order = (args.interval, 0.0) if number % 2 == 0 else (0.0, args.interval)
            for interval in order:
                figures = await _idle_round(
                    emulator,
                    interval=interval,
                    rooms=args.rooms,
                    participants=args.participants,
                    window=args.window,
                    use_redis=args.redis,
                )
                results["rounds"].append(figures)
                print(f"round {number + 1}: {json.dumps(figures)}", flush=True)
        results["large_room"] = await _large_room(emulator, args.large)
        print(f"large room: {json.dumps(results['large_room'])}", flush=True)
    finally:
        emulator.stop()

    def median(interval: float, key: str) -> float:
        return float(
            statistics.median(r[key] for r in results["rounds"] if r["interval_seconds"] == interval)
        )

    on, off = args.interval, 0.0
    print(
        f"\n{args.rooms} restricted rooms x {args.participants} participants, all in line; "
        f"median of {args.rounds} rounds of {args.window:g} s"
    )
    print(f"{'':<52} {'reconciling':>12} {'off':>10}")
    for title, key in (
        ("LiveKit calls per second", "livekit_calls_per_second"),
        ("LiveKit calls per second per 1,000 rooms", "livekit_calls_per_second_per_1000_rooms"),
        ("rooms checked in the window", "rooms_checked"),
        ("repairs in the window", "repairs"),
        ("service CPU (cores)", "service_cores"),
        ("emulator CPU (cores)", "emulator_cores"),
    ):
        print(f"{title:<52} {median(on, key):>12g} {median(off, key):>10g}")
    extra = median(on, "service_cores") - median(off, "service_cores")
    checks_per_second = args.rooms / args.interval
    print(
        f"reconciliation's own CPU: {extra:.4f} cores = {extra * 1000 / checks_per_second:.2f} ms per room "
        f"check ({checks_per_second:g} checks/s); per 1,000 rooms: {extra * 1000 / args.rooms:.4f} cores"
    )
    large = results["large_room"]
    print(
        f"a room of {large['participants']:,}: ListParticipants answer {large['answer_bytes'] / 1e6:.2f} MB, "
        f"{large['list_participants_ms']} ms into views; whole check {large['whole_check_ms']} ms; views "
        f"{large['views_python_bytes_per_participant']} B per participant"
    )
    results["reconciliation_cores"] = round(extra, 4)
    results["ms_per_room_check"] = round(extra * 1000 / checks_per_second, 3)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "reconcile.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
