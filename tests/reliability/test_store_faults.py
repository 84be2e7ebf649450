"""Beyond issue 3's list, with the same proxy: the state store (Redis) fails briefly under the service.
The ack policy requeues a command whose store call failed; these tests check what that does to the
per-room order and to commands that arrive during a short store outage."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from tests.reliability.harness import (
    LoadClient,
    cleanup,
    proxy_for,
    service_log_lines,
    started_service,
    with_port,
)
from tests.support.processes import REDIS_URL, EmulatorProcess, Names

pytestmark = pytest.mark.slow

COMMANDS = 10


async def test_a_store_failure_does_not_let_later_commands_of_the_room_overtake(
    livekit: EmulatorProcess, topology: Names
) -> None:
    proxy = proxy_for(REDIS_URL, 6379)
    service = await started_service(topology, livekit.url, {"REDIS_URL": with_port(REDIS_URL, proxy.port)})
    client = LoadClient(topology)
    try:
        async with client:
            room, participant = str(uuid.uuid4()), "p-1"
            await client.send_command(room, participant, 0, {"action": "join"})
            assert await client.wait_until(lambda: len(client.books.events) == 1, timeout=10)
            await asyncio.sleep(0.5)  # recorded in the store and acknowledged as well
            # Redis goes silent: command 1 waits on it, 2..n wait behind it in the replica.
            proxy.set_mode("blackhole")
            for number in range(1, COMMANDS + 1):
                await client.send_command(room, participant, number, {"action": "create_new_access_token"})
            await asyncio.sleep(0.5)
            # Back: command 1's dead connection is reset (its store call fails, it is requeued).
            proxy.set_mode("forward")
            await client.wait_answered(timeout=30, quiet=0.5)
            books = client.books.accounting()
            order = [client.books.commands[e.correlation_id or ""].number for e in client.books.events]
            requeued = [
                x for x in service_log_lines(service) if x["message"].startswith("command failed, requeued")
            ]
            print(f"\nstore blip: answer order {order}; requeued {len(requeued)}; {books.summary()}")
            assert not books.missing
            assert not books.out_of_order, order
    finally:
        await cleanup(topology, [service], queues=[client.observer_queue_name])
        proxy.stop()


async def test_a_one_second_store_outage_loses_no_command(livekit: EmulatorProcess, topology: Names) -> None:
    proxy = proxy_for(REDIS_URL, 6379)
    service = await started_service(topology, livekit.url, {"REDIS_URL": with_port(REDIS_URL, proxy.port)})
    client = LoadClient(topology)
    try:
        async with client:
            await client.watch_dead_letters()
            proxy.set_mode("reset")  # Redis refuses (connections reset at once)
            sent = await asyncio.gather(
                *(client.send_command(str(uuid.uuid4()), "p-1", 0, {"action": "join"}) for _ in range(5))
            )
            await asyncio.sleep(1.0)
            proxy.set_mode("forward")
            answered = await client.wait_answered(timeout=8, quiet=0.5)
            books = client.books.accounting()
            reasons = sorted(
                {str((m.headers or {}).get("x-signaling-reason"))[:60] for m in client.dead_letters}
            )
            print(
                f"\nstore outage of 1 s: {len(sent)} commands, answered "
                f"{len(sent) - len(books.missing)}, dead-lettered {len(client.dead_letters)} "
                f"(reasons {reasons})"
            )
            assert answered and not books.missing
            assert not client.dead_letters
    finally:
        await cleanup(topology, [service], queues=[client.observer_queue_name])
        proxy.stop()
