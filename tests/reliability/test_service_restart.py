"""The service is killed (SIGKILL) or stopped (SIGTERM) under load, and a second process on the same
names takes over: every confirmed command answered exactly once, in its room's order. Both use Redis,
as replicas do in production: the duplicate window must outlive a process for a redelivered command to
be recognised."""

from __future__ import annotations

import asyncio
import time

import pytest

from testkit.load import LoadClient
from testkit.processes import REDIS_URL, ServiceProcess
from tests.reliability.conftest import ConnectLoadClient, StartService

pytestmark = pytest.mark.slow

ROOMS = 20
COMMANDS = 10
GRACE_SECONDS = 5.0
#: The replica stopped under load and the one started after it share their state in Redis.
REPLICA_ENV = {"REDIS_URL": REDIS_URL, "SHUTDOWN_GRACE_SECONDS": str(GRACE_SECONDS), "LOG_LEVEL": "DEBUG"}


async def first_under_load(
    start_service: StartService, load_client: ConnectLoadClient
) -> tuple[ServiceProcess, LoadClient, asyncio.Task[list[str]]]:
    """The first replica, and a load client whose load has run on it for a second."""
    first = await start_service(REPLICA_ENV, name="first")
    client = await load_client()
    load = asyncio.create_task(client.load(ROOMS, COMMANDS, pace=0.2))
    await asyncio.sleep(1.0)
    return first, client, load


async def test_sigkill_under_load_then_restart_answers_every_command_once_in_order(
    start_service: StartService, load_client: ConnectLoadClient
) -> None:
    first, client, load = await first_under_load(start_service, load_client)
    answered_before = len(client.books.events)
    await asyncio.to_thread(first.kill)
    killed = time.monotonic()
    await asyncio.sleep(0.5)  # commands keep coming while nobody consumes
    second = await start_service(REPLICA_ENV, name="second")
    took_over = time.monotonic() - killed
    await asyncio.wait_for(load, 90)
    answered = await client.wait_answered(timeout=30)
    books = client.books.accounting()
    duplicates_suppressed = await asyncio.to_thread(
        second.metric, "livekit_signaling_duplicate_commands_total"
    )
    print(
        f"\nSIGKILL: {answered_before} events before the kill, second process ready {took_over:.2f}s "
        f"after it; duplicates suppressed by the second process {duplicates_suppressed:.0f}; "
        f"{books.summary()}"
    )
    print("\n".join(client.books.describe([*books.missing, *books.duplicated], since=killed)))
    print(f"service logs: {first.log_path} {second.log_path}")
    assert first.process is not None and first.process.returncode == -9
    assert answered, books.summary()
    books.assert_exactly_once_in_order()


async def test_sigterm_under_load_exits_cleanly_within_grace_and_loses_nothing(
    start_service: StartService, load_client: ConnectLoadClient
) -> None:
    first, client, load = await first_under_load(start_service, load_client)
    in_flight = await asyncio.to_thread(first.metric, "livekit_signaling_commands_in_flight")
    signalled = time.monotonic()
    code = await asyncio.to_thread(first.terminate, GRACE_SECONDS + 10)
    exited = time.monotonic() - signalled
    answered_by_first = len(client.books.events)
    second = await start_service(REPLICA_ENV, name="second")
    await asyncio.wait_for(load, 90)
    answered = await client.wait_answered(timeout=30)
    books = client.books.accounting()
    print(
        f"\nSIGTERM: exit code {code} after {exited:.2f}s (grace {GRACE_SECONDS}s), {in_flight:.0f} in "
        f"flight when signalled, {answered_by_first} events before the exit; {books.summary()}"
    )
    print("\n".join(client.books.describe([*books.missing, *books.duplicated], since=signalled)))
    print(f"service logs: {first.log_path} {second.log_path}")
    assert code == 0, first.logs()[-2000:]
    assert exited <= GRACE_SECONDS + 1.0
    assert "stopped" in first.logs()
    assert answered, books.summary()
    books.assert_exactly_once_in_order()
