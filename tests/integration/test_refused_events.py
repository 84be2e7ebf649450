"""An event the broker nacks (a queue it is routed to refuses it) is retried in place, not requeued at
once: during a cluster node's restart quorum queues refuse publishes for seconds, and five immediate
redeliveries dead-lettered commands in the rolling-restart test (tests/ha). Here a participant's own
queue is full with ``x-overflow: reject-publish``, which makes the broker nack the same way."""

from __future__ import annotations

import asyncio
import uuid

import aio_pika

from livekit_signaling.schemas.routing import participant_routing_key
from testkit.amqp import SignalingClient
from testkit.processes import AMQP_URL, Names, ServiceProcess


async def test_a_refused_event_is_delivered_once_the_queue_takes_it_again(
    client: SignalingClient, names: Names, service: ServiceProcess, room: str
) -> None:
    participant = f"p-{uuid.uuid4().hex[:8]}"
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        full = await channel.declare_queue(
            f"{names.prefix}.full.{uuid.uuid4().hex[:6]}",
            exclusive=True,
            arguments={"x-max-length": 1, "x-overflow": "reject-publish"},
        )
        await full.bind(names.event_exchange, routing_key=participant_routing_key(room, participant))
        await channel.default_exchange.publish(aio_pika.Message(b"filler"), routing_key=full.name)

        message_id = await client.send(room, participant, {"action": "join"})
        await asyncio.sleep(1.5)  # refused meanwhile: the queue holds the filler only
        assert await full.get(no_ack=True, fail=False) is not None  # the filler: room for one more
        answer = await full.get(timeout=10, no_ack=True, fail=False)
        for _ in range(100):
            if answer is not None:
                break
            await asyncio.sleep(0.1)
            answer = await full.get(no_ack=True, fail=False)
        assert answer is not None, "the refused event never arrived"
        assert answer.correlation_id == message_id
        assert answer.type == "join_success"

    answers = await client.wait_for(lambda e: e.correlation_id == message_id, timeout=10)
    assert {a.message_id for a in answers} == {answer.message_id}, "answered by one event, however often sent"
    assert "refused by the broker" in service.logs()
