"""A partition the service holds but no longer consumes is subscribed to again.

aio-pika restores channels and consumers after a reconnection, not when the broker cancels a consumer
on a connection that stays up, which RabbitMQ does when the queue is deleted (``basic.cancel``, the
consumer cancel notification). The partition would then stay held and unconsumed for good. Here every
partition queue is deleted under the running service (an operator's mistake, or a definitions import
gone wrong): the balancer's rounds (``REBALANCE_INTERVAL_SECONDS``) find the partitions without a
consumer two rounds running, subscribe to them again (declaring and binding each queue anew), and
commands are answered again."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from testkit.amqp import delete_queues
from testkit.processes import PARTITIONS, Names
from tests.reliability.conftest import ConnectLoadClient, StartService

pytestmark = pytest.mark.slow

INTERVAL_SECONDS = 0.5
RESUBSCRIBED = "livekit_signaling_partitions_resubscribed_total"


async def test_partition_queues_deleted_under_the_service_are_declared_bound_and_consumed_again(
    start_service: StartService, load_client: ConnectLoadClient, names: Names
) -> None:
    service = await start_service({"REBALANCE_INTERVAL_SECONDS": str(INTERVAL_SECONDS)})
    client = await load_client()
    before, _ = await client.ask(str(uuid.uuid4()), "alice", {"action": "join"})
    assert before.message == "join_success"
    assert service.metric(RESUBSCRIBED) == 0

    await delete_queues(names.partition_queues(PARTITIONS))
    resubscribed = await asyncio.to_thread(service.wait_metric, RESUBSCRIBED, PARTITIONS, timeout=15)
    assert resubscribed == PARTITIONS, f"{resubscribed} of {PARTITIONS} partitions subscribed to again"

    # Every partition consumed again: rooms spread over all of them are answered.
    rooms = [str(uuid.uuid4()) for _ in range(4 * PARTITIONS)]
    answers = await asyncio.gather(*(client.ask(room, "bob", {"action": "join"}) for room in rooms))
    assert [event.message for event, _ in answers] == ["join_success"] * len(rooms)
    lines = [r["message"] for r in service.log_records() if "subscribing again" in r["message"]]
    assert len(lines) == PARTITIONS, lines
    assert service.metric(RESUBSCRIBED) == PARTITIONS
    assert service.is_ready()
