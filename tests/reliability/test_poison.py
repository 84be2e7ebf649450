"""A command that keeps failing reaches the dead-letter queue after a bounded number of deliveries,
instead of looping.

What makes a command fail for real (processor.py's ack policy): the state store being unavailable (or
an unexpected error) requeues it, and on its last allowed delivery the service dead-letters it with the
reason. Here the service's Redis is a port where nothing listens, with SIGNALING_DELIVERY_LIMIT=3 (and
in-place retries cut to half a second per delivery)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from livekit_signaling.schemas.routing import command_routing_key
from testkit.amqp import encode_command
from testkit.processes import free_port
from tests.reliability.conftest import ConnectLoadClient, StartService

pytestmark = pytest.mark.slow

DELIVERY_LIMIT = 3


async def test_a_command_that_keeps_failing_is_dead_lettered_after_the_delivery_limit(
    start_service: StartService, load_client: ConnectLoadClient
) -> None:
    nowhere = free_port()  # nothing listens there: every Redis call is refused
    service = await start_service(
        {
            "REDIS_URL": f"redis://127.0.0.1:{nowhere}/0",
            "SIGNALING_DELIVERY_LIMIT": str(DELIVERY_LIMIT),
            # Each delivery first retries in place (a store outage is usually short); keep that short
            # here so that the delivery limit is what ends it.
            "TRANSIENT_RETRY_SECONDS": "0.5",
        }
    )
    client = await load_client()
    await client.watch_dead_letters()
    room = str(uuid.uuid4())
    # One with a message id (fails at the duplicate check), one without (fails in the handler,
    # after LiveKit was called: the room state cannot be loaded).
    with_id = await client.send_command(room, "p-1", 0, {"action": "join"})
    without_id = encode_command(room, "p-2", {"action": "join"})
    await client.publish_once(
        without_id, command_routing_key(room), message_id=None, headers={"x-test": "no-id"}
    )

    assert await client.wait_until(lambda: len(client.dead_letters) >= 2, timeout=20), (
        f"dead letters: {len(client.dead_letters)}"
    )
    await asyncio.sleep(2.0)  # a second copy (the broker's own dead-lettering) would arrive by now

    letters = client.dead_letters
    headers = [dict(m.headers or {}) for m in letters]
    reasons = [str(h.get("x-signaling-reason")) for h in headers]
    lines = [
        line
        for line in service.log_records()
        if line.get("logger") == "livekit_signaling.pipeline.processor" and line.get("room") == room
    ]
    requeued = [line for line in lines if line["message"].startswith("command failed, requeued")]
    dead = [line for line in lines if "dead-lettered" in line["message"]]
    healthz = await asyncio.to_thread(service.http, "/healthz")
    metric_requeued = await asyncio.to_thread(
        service.metric, "livekit_signaling_commands_total", outcome="requeued"
    )
    metric_dead = await asyncio.to_thread(
        service.metric, "livekit_signaling_dead_letters_total", reason="failed"
    )
    print(
        f"\npoison: {len(letters)} dead letters, reasons {reasons}; delivery counts "
        f"{[h.get('x-delivery-count') for h in headers]}; requeued {len(requeued)} times "
        f"(metric {metric_requeued:.0f}), dead-lettered by the service {len(dead)} (metric "
        f"{metric_dead:.0f}); broker dead-letter headers "
        f"{[h.get('x-first-death-reason') for h in headers]}"
    )
    assert len(letters) == 2
    assert all(reason.startswith("failed: StoreUnavailable") for reason in reasons), reasons
    assert all(h.get("x-original-routing-key") == command_routing_key(room) for h in headers)
    assert all("x-death" not in h and "x-first-death-reason" not in h for h in headers)
    assert {m.body for m in letters} == {encode_command(room, p, {"action": "join"}) for p in ("p-1", "p-2")}
    # Bounded: each was delivered DELIVERY_LIMIT times (requeued LIMIT - 1 times, then dead-lettered).
    assert len(requeued) == 2 * (DELIVERY_LIMIT - 1)
    assert len(dead) == 2
    assert not any(e.correlation_id == with_id.message_id for e in client.books.events)
    assert service.process is not None and service.process.poll() is None
    assert healthz[0] == 200
