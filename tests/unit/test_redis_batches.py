"""Round trips shared by commands (``store.connection.Batches``): what callers queue in one turn of the
event loop goes out as one pipeline, each caller gets its own replies, and a command that fails fails
only its caller."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from livekit_signaling.store.connection import RedisConnection
from livekit_signaling.store.target import RedisTarget
from testkit.processes import REDIS_URL


@pytest.fixture
async def connection() -> AsyncIterator[RedisConnection]:
    connection = RedisConnection(RedisTarget(url=REDIS_URL), timeout_seconds=2.0)
    yield connection
    await connection.close()


async def test_callers_of_one_turn_share_one_pipeline_and_get_their_own_replies(
    connection: RedisConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = f"test-batches-{uuid.uuid4().hex[:8]}"
    pipelines = 0
    make_pipeline = connection.client.pipeline

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal pipelines
        pipelines += 1
        return make_pipeline(*args, **kwargs)

    monkeypatch.setattr(connection.client, "pipeline", counted)
    keys = [f"{prefix}:{i}" for i in range(20)]
    try:
        await asyncio.gather(
            *(connection.batched(key, lambda pipe, key=key: pipe.set(key, key.encode())) for key in keys)
        )
        assert pipelines == 1
        replies = await asyncio.gather(
            *(
                connection.batched(key, lambda pipe, key=key: (pipe.get(key), pipe.exists(key)))
                for key in keys
            )
        )
        assert replies == [[key.encode(), 1] for key in keys]
        by_key = await connection.pipelines(
            {keys[0]: lambda pipe: pipe.get(keys[0]), keys[1]: lambda pipe: pipe.get(keys[1])}
        )
        assert by_key == {keys[0]: [keys[0].encode()], keys[1]: [keys[1].encode()]}
        assert pipelines == 3
    finally:
        await connection.client.delete(*keys)


async def test_a_failing_command_fails_its_caller_only(connection: RedisConnection) -> None:
    key = f"test-batches-{uuid.uuid4().hex[:8]}"
    await connection.client.set(key, b"a string")
    try:
        wrong, right = await asyncio.gather(
            connection.batched(key, lambda pipe: pipe.hget(key, "field")),  # WRONGTYPE
            connection.batched(key, lambda pipe: pipe.get(key)),
            return_exceptions=True,
        )
        assert isinstance(wrong, ResponseError)
        assert right == [b"a string"]
    finally:
        await connection.client.delete(key)


async def test_a_lost_round_trip_fails_every_caller_of_the_batch() -> None:
    # Nothing listens there: every caller of the batch gets the connection error (each retries on its own).
    connection = RedisConnection(RedisTarget(url="redis://127.0.0.1:1/0"), timeout_seconds=0.5)
    try:
        outcomes = await asyncio.gather(
            *(connection.batched("k", lambda pipe: pipe.get("k")) for _ in range(3)), return_exceptions=True
        )
        assert all(isinstance(outcome, RedisConnectionError) for outcome in outcomes), outcomes
    finally:
        await connection.close()
