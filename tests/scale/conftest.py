"""The scale tests' own fixtures: each test gets its own uuid-named topology and Redis keys (the
replicas share their state in Redis), removed after it for as many partitions as the test module's
``PARTITIONS``, and a broker client on them once the module's ``replicas`` run."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from testkit.amqp import SignalingClient, delete_topology
from testkit.cleanup import delete_redis_keys
from testkit.processes import Names, ServiceProcess


@pytest.fixture
def names(request: pytest.FixtureRequest) -> Iterator[Names]:
    names = Names()
    yield names
    asyncio.run(delete_topology(names, request.module.PARTITIONS))
    delete_redis_keys(names.redis_prefix)


@pytest.fixture
async def client(names: Names, replicas: list[ServiceProcess]) -> AsyncIterator[SignalingClient]:
    async with SignalingClient(names) as signaling:
        yield signaling
