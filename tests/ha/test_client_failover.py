"""The public client given every node of a 3-node RabbitMQ cluster: the node it is connected to is
killed, and the client moves to another node by itself; commands sent then, in rooms of every
partition, are answered, and a room's stream opened before goes on. The service runs on another node,
so that only the client has to move."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from livekit_signaling.client import SignalingClient
from livekit_signaling.schemas.events import JoinSuccess
from testkit.processes import Names
from testkit.rabbit_cluster import RabbitCluster
from tests.reliability.conftest import StartService

pytestmark = [pytest.mark.slow, pytest.mark.ha]


async def test_the_client_moves_to_another_node_when_its_node_is_lost(
    cluster: RabbitCluster, start_service: StartService, names: Names
) -> None:
    await start_service({"AMQP_URL": cluster.amqp_url(first="a")}, broker_urls=cluster.urls(first="a"))
    room = f"failover-{uuid.uuid4().hex[:8]}"
    client = SignalingClient(
        cluster.urls(first="b"),
        command_exchange=names.command_exchange,
        event_exchange=names.event_exchange,
        reconnect_interval=0.2,
        timeout=20.0,
    )
    try:
        async with client, client.events(room) as events:
            assert client.node == cluster.nodes["b"].address
            before = await client.join(room, "before")
            assert (await anext(events)).payload == before

            await asyncio.to_thread(cluster.kill, "b")
            lost_at = time.monotonic()

            async def answered_in(room: str) -> float:
                await client.join(room, "after")
                return time.monotonic() - lost_at

            # Rooms enough to reach every partition, those whose queue leader was on b among them.
            rooms = [room, *(f"{room}-{n}" for n in range(11))]
            delays = await asyncio.gather(*(answered_in(each) for each in rooms))
            moved_to = client.node
            seen = await asyncio.wait_for(anext(events), 5)
        slowest = max(delays)
        print(f"\nnode b killed: {len(rooms)} rooms answered via {moved_to}, the last {slowest:.2f}s later")
        assert moved_to in {cluster.nodes["a"].address, cluster.nodes["c"].address}
        assert seen.participant == "after"
        assert isinstance(seen.payload, JoinSuccess)
    finally:
        restarted_in = await asyncio.to_thread(cluster.start, "b")
        print(f"node b running again after {restarted_in:.1f}s")
