"""Issue 3, 2 and 3: the service is killed (SIGKILL) or stopped (SIGTERM) under load, and a second
process on the same names takes over. Both use Redis, as replicas do in production: the duplicate
window must outlive a process for a redelivered command to be recognised."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.reliability.harness import PARTITIONS, LoadClient, cleanup
from tests.support.processes import REDIS_URL, EmulatorProcess, Names, ServiceProcess

pytestmark = pytest.mark.slow

ROOMS = 20
COMMANDS = 10
GRACE_SECONDS = 5.0


def first_and_second(topology: Names, livekit: EmulatorProcess) -> tuple[ServiceProcess, ServiceProcess]:
    """The replica that is stopped under load and the one started after it, sharing state in Redis."""
    env = {"REDIS_URL": REDIS_URL, "SHUTDOWN_GRACE_SECONDS": str(GRACE_SECONDS), "LOG_LEVEL": "DEBUG"}
    first, second = (
        ServiceProcess(topology, livekit.url, partitions=PARTITIONS, env=env, name=name)
        for name in ("first", "second")
    )
    return first, second


async def test_sigkill_under_load_then_restart_answers_every_command_once_in_order(
    livekit: EmulatorProcess, topology: Names
) -> None:
    first, second = first_and_second(topology, livekit)
    await asyncio.to_thread(first.start)
    client = LoadClient(topology)
    try:
        async with client:
            load = asyncio.create_task(client.load(ROOMS, COMMANDS, pace=0.2))
            await asyncio.sleep(1.0)
            answered_before = len(client.books.events)
            await asyncio.to_thread(first.kill)
            killed = time.monotonic()
            await asyncio.sleep(0.5)  # commands keep coming while nobody consumes
            await asyncio.to_thread(second.start)
            took_over = time.monotonic() - killed
            await asyncio.wait_for(load, 90)
            answered = await client.wait_answered(timeout=30)
            books = client.books.accounting()
            duplicates_suppressed = await asyncio.to_thread(
                second.metric, "livekit_signaling_duplicate_commands_total"
            )
            print(
                f"\nSIGKILL: {answered_before} events before the kill, second process ready "
                f"{took_over:.2f}s after it; duplicates suppressed by the second process "
                f"{duplicates_suppressed:.0f}; {books.summary()}"
            )
            print("\n".join(client.books.describe([*books.missing, *books.duplicated], since=killed)))
            print(f"service logs: {first.log_path} {second.log_path}")
            assert first.process is not None and first.process.returncode == -9
            assert answered, books.summary()
            books.assert_exactly_once_in_order()
    finally:
        await cleanup(topology, [first, second], queues=[client.observer_queue_name])


async def test_sigterm_under_load_exits_cleanly_within_grace_and_loses_nothing(
    livekit: EmulatorProcess, topology: Names
) -> None:
    first, second = first_and_second(topology, livekit)
    await asyncio.to_thread(first.start)
    client = LoadClient(topology)
    try:
        async with client:
            load = asyncio.create_task(client.load(ROOMS, COMMANDS, pace=0.2))
            await asyncio.sleep(1.0)
            in_flight = await asyncio.to_thread(first.metric, "livekit_signaling_commands_in_flight")
            signalled = time.monotonic()
            code = await asyncio.to_thread(first.terminate, GRACE_SECONDS + 10)
            exited = time.monotonic() - signalled
            answered_by_first = len(client.books.events)
            await asyncio.to_thread(second.start)
            await asyncio.wait_for(load, 90)
            answered = await client.wait_answered(timeout=30)
            books = client.books.accounting()
            print(
                f"\nSIGTERM: exit code {code} after {exited:.2f}s (grace {GRACE_SECONDS}s), "
                f"{in_flight:.0f} in flight when signalled, {answered_by_first} events before the exit; "
                f"{books.summary()}"
            )
            print("\n".join(client.books.describe([*books.missing, *books.duplicated], since=signalled)))
            print(f"service logs: {first.log_path} {second.log_path}")
            assert code == 0, first.logs()[-2000:]
            assert exited <= GRACE_SECONDS + 1.0
            assert "stopped" in first.logs()
            assert answered, books.summary()
            books.assert_exactly_once_in_order()
    finally:
        await cleanup(topology, [first, second], queues=[client.observer_queue_name])
