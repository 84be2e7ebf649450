"""Broker addresses: how nodes are named (never with credentials) and the order they are tried in."""

from __future__ import annotations

import asyncio

import pytest
from yarl import URL

from livekit_signaling.transport.brokers import FailoverConnection, node_label


@pytest.mark.parametrize(
    ("url", "label"),
    [
        ("amqp://guest:guest@127.0.0.1:5672/", "127.0.0.1:5672/"),
        (
            "amqps://user:secret@rabbit-1.rabbit-nodes.messaging/prod",
            "rabbit-1.rabbit-nodes.messaging:5671/prod",
        ),
        ("amqp://rabbit", "rabbit:5672/"),
        ("amqp://u:p@[::1]:5673/%2F", "[::1]:5673/%2F"),
    ],
)
def test_a_node_is_named_by_host_port_and_vhost_only(url: str, label: str) -> None:
    assert node_label(url) == label


async def test_each_lost_connection_or_failed_attempt_moves_to_the_next_node_in_turn() -> None:
    urls = [URL(f"amqp://user:secret@node-{n}:5672/") for n in range(3)]
    connection = FailoverConnection(urls, first=1)
    seen = [connection.node]
    for _ in range(4):
        closing: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        closing.set_exception(ConnectionRefusedError())
        await connection._on_connection_close(closing)
        seen.append(connection.node)
    assert seen == ["node-1:5672/", "node-2:5672/", "node-0:5672/", "node-1:5672/", "node-2:5672/"]
    assert "secret" not in str(connection) and "user" not in str(connection)
    await connection.close()
