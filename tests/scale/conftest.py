"""Fixtures of the scale tests: each test's own uuid-named topology and Redis keys (removed after it,
for as many partitions as the test module's ``PARTITIONS``), and a broker client on them once the
module's ``replicas`` run."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from tests.support.amqp import SignalingClient, delete_topology
from tests.support.processes import REDIS_URL, Names, ServiceProcess


@pytest.fixture
def names(request: pytest.FixtureRequest) -> Iterator[Names]:
    names = Names()
    yield names
    asyncio.run(delete_topology(names, request.module.PARTITIONS))
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{names.redis_prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
async def client(names: Names, replicas: list[ServiceProcess]) -> AsyncIterator[SignalingClient]:
    async with SignalingClient(names) as signaling:
        yield signaling
