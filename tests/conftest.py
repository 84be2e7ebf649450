"""The suite's fixtures, under one name each: the LiveKit emulator process (``emulator_process``) and a
control client of it (``emulator``), the uuid-named topology (``names``), the service as a process on it
(``service``), a broker client (``client``) and a fresh room id (``room``). A directory whose tests need
another scope overrides the fixture of the same name in its own conftest.py (tests/reliability:
``names`` per test)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from testkit.amqp import SignalingClient, delete_topology
from testkit.emulator import Emulator
from testkit.processes import EmulatorProcess, Names, ServiceProcess

TESTS = Path(__file__).resolve().parent
SYSTEM_BROKER_GROUP = "system-broker"


def _group(test_file: Path) -> str:
    """Tests that run on RabbitMQ nodes, Redis processes and test hosts of their own form groups that
    ``scripts/test`` (pytest-xdist, ``--dist loadgroup``) runs on workers of their own, beside the rest:
    the RabbitMQ cluster's tests, the Redis groups' and clusters' tests, the network partitions. All
    other tests share the system RabbitMQ, which one of them restarts, so they are one group, on one
    worker, in collection order, as a plain ``pytest`` run has them."""
    tier = test_file.relative_to(TESTS).parts[0]
    if tier == "ha":
        return "ha-redis" if "redis" in test_file.name else "ha-rabbitmq"
    if tier == "partitions":
        return tier
    return SYSTEM_BROKER_GROUP


def pytest_itemcollected(item: pytest.Item) -> None:
    # As each test is collected, so that pytest-xdist's collection hook, which turns the group into a
    # suffix of the node id (what ``--dist loadgroup`` schedules by), sees it whatever the hooks' order.
    item.add_marker(pytest.mark.xdist_group(_group(item.path.resolve())))


@pytest.fixture(scope="session")
def emulator_process() -> Iterator[EmulatorProcess]:
    process = EmulatorProcess()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def names() -> Names:
    """The topology of the session's ``service``."""
    return Names()


@pytest.fixture(scope="session")
def service(names: Names, emulator_process: EmulatorProcess) -> Iterator[ServiceProcess]:
    process = ServiceProcess(names, emulator_process.url).start()
    yield process
    process.stop()
    asyncio.run(delete_topology(names))


@pytest.fixture
async def client(service: ServiceProcess, names: Names) -> AsyncIterator[SignalingClient]:
    async with SignalingClient(names) as signaling:
        yield signaling


@pytest.fixture
async def emulator(emulator_process: EmulatorProcess) -> AsyncIterator[Emulator]:
    """The emulator's control client, its fault mode reset before and after the test."""
    async with Emulator(emulator_process.url) as control:
        await control.fault("none")
        yield control
        await control.fault("none")


@pytest.fixture
def room() -> str:
    return f"{uuid.uuid4()}:{uuid.uuid4().hex[:8]}"
