"""Input that is not a command never stops the service: bodies that are not envelopes (nobody to tell)
are dead-lettered with the reason; mis-addressed commands too; the service keeps answering."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage

from livekit_signaling.schemas.routing import command_routing_key
from testkit.amqp import SignalingClient
from testkit.processes import AMQP_URL, Names, ServiceProcess


@pytest.fixture
async def dead_letters(names: Names, service: ServiceProcess) -> AsyncIterator[list[AbstractIncomingMessage]]:
    """A private queue bound to the service's dead-letter exchange (fanout), so this test sees every
    dead letter without consuming the service's own dead-letter queue."""
    received: list[AbstractIncomingMessage] = []
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(
            f"{names.prefix}.dlq-observer.{uuid.uuid4().hex[:6]}", exclusive=True
        )
        await queue.bind(names.dead_letter)

        async def collect(message: AbstractIncomingMessage) -> None:
            received.append(message)

        await queue.consume(collect, no_ack=True)
        yield received


async def wait_dead_letter(received: list[AbstractIncomingMessage], body: bytes) -> AbstractIncomingMessage:
    for _ in range(100):
        for message in received:
            if message.body == body:
                return message
        await asyncio.sleep(0.05)
    raise AssertionError(f"{body!r} was not dead-lettered")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\x00\xff not json", "malformed_envelope"),
        (b'{"room": "r", "participant": "p", "role": "root", "payload": {}}', "$.role"),
        (b'{"room": "r", "participant": "p"}', "missing required field"),
        (b"[" * 100_000, "exceeds the limit"),
    ],
    ids=["binary", "bad-role", "missing-fields", "oversize"],
)
async def test_bodies_that_are_not_envelopes_are_dead_lettered_with_a_reason(
    client: SignalingClient, dead_letters: list[AbstractIncomingMessage], body: bytes, reason: str
) -> None:
    room = str(uuid.uuid4())
    await client.send(room, "p", {}, raw=body)
    message = await wait_dead_letter(dead_letters, body)
    assert message.headers is not None
    assert reason in str(message.headers["x-signaling-reason"])
    assert message.headers["x-original-routing-key"] == command_routing_key(room)
    # Still serving.
    answer = await client.reply(room, "p", {"action": "create_new_access_token"})
    assert answer.message == "credentials"


async def test_command_published_under_another_rooms_key_is_dead_lettered(
    client: SignalingClient, dead_letters: list[AbstractIncomingMessage]
) -> None:
    victim_room, sender_room = str(uuid.uuid4()), str(uuid.uuid4())
    body = json.dumps(
        {"room": victim_room, "participant": "p", "role": "moderator", "payload": {"action": "close_room"}}
    ).encode()
    await client.send(sender_room, "p", {}, raw=body, routing_key=command_routing_key(sender_room))
    message = await wait_dead_letter(dead_letters, body)
    assert message.headers is not None
    assert str(message.headers["x-signaling-reason"]).startswith("room_mismatch")
    await client.quiet()
    assert not client.events_for(victim_room)
