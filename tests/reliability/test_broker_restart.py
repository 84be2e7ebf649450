"""RabbitMQ restarts (``rabbitmqctl stop_app`` / ``start_app``) under a steady load: every confirmed
command is answered exactly once, in its room's order, and /readyz says 503 while the broker is away.

The test's publisher retries what fails during the outage; a command counts as confirmed once its
publisher confirm arrived. The observer queue is durable, classic and uuid-named (not exclusive), so it
and the events in it survive the restart; it is deleted at the end."""

from __future__ import annotations

import asyncio
import time

import pytest

from testkit.broker_admin import ensure_broker_running, rabbitmqctl, wait_broker_running
from testkit.load import abandoned_commands
from testkit.processes import ReadinessPoller
from tests.reliability.conftest import ConnectLoadClient, StartService

pytestmark = pytest.mark.slow

ROOMS = 20
COMMANDS = 10  # per room, after its join


async def test_broker_restart_under_load_loses_nothing_and_keeps_room_order(
    start_service: StartService, load_client: ConnectLoadClient
) -> None:
    service = await start_service({"LOG_LEVEL": "DEBUG"})
    client = await load_client()
    try:
        await client.watch_dead_letters()
        with ReadinessPoller(service) as poller:
            load = asyncio.create_task(client.load(ROOMS, COMMANDS, pace=0.25))
            await asyncio.sleep(1.0)
            stopping = time.monotonic()
            await asyncio.to_thread(rabbitmqctl, "stop_app")
            stopped = time.monotonic()
            await asyncio.to_thread(rabbitmqctl, "start_app")
            await asyncio.to_thread(wait_broker_running)
            running = time.monotonic()
            await asyncio.wait_for(load, 90)
            answered = await client.wait_answered(timeout=30)
            ready_again = await asyncio.to_thread(service.wait_ready, 30)
        # Started when the broker stopped: redelivered by the broker, possibly after later ones.
        returned = abandoned_commands(service)
        books = client.books.accounting(returned_by_broker=returned)
        not_ready = poller.first(lambda status, _: status == 503, after=stopping)
        ready = poller.first(lambda status, _: status == 200, after=running)
        reconnects = await asyncio.to_thread(service.metric, "livekit_signaling_amqp_reconnects_total")
        print(
            f"\nbroker restart: stop_app {stopped - stopping:.1f}s, start_app until running "
            f"{running - stopped:.1f}s; readyz 503 {(not_ready or 0) - stopping:.2f}s after stop_app "
            f"began, 200 again {(ready or 0) - running:.2f}s after the broker ran; service reconnects "
            f"{reconnects:.0f}, client reconnects {client.reconnects}; {books.summary()}; "
            f"dead-lettered {len(client.dead_letters)} {client.dead_letter_reasons()}; in flight at the "
            f"stop and redelivered {len(returned)}"
        )
        print("\n".join(client.books.describe([*books.missing, *books.duplicated], since=stopping)))
        print(f"service log: {service.log_path}")
        assert ready_again is None
        assert not_ready is not None and not_ready < running, "readyz never said 503 during the outage"
        assert ready is not None, "readyz never said 200 again"
        assert reconnects >= 1
        assert service.process is not None and service.process.poll() is None
        assert answered, books.summary()
        books.assert_exactly_once_in_order()
    finally:
        await asyncio.to_thread(ensure_broker_running)
