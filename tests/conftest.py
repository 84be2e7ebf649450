"""Fixtures shared by the integration tests: a LiveKit emulator process, the service as a process on a
uuid-named topology, a broker client and an emulator client per test."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.support.amqp import SignalingClient, delete_topology
from tests.support.emulator import Emulator
from tests.support.processes import EmulatorProcess, Names, ServiceProcess

PARTITIONS = 4


@pytest.fixture(scope="session")
def emulator_process() -> Iterator[EmulatorProcess]:
    process = EmulatorProcess()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def names() -> Names:
    return Names()


@pytest.fixture(scope="session")
def service(names: Names, emulator_process: EmulatorProcess) -> Iterator[ServiceProcess]:
    process = ServiceProcess(names, emulator_process.url, partitions=PARTITIONS).start()
    yield process
    process.stop()
    asyncio.run(delete_topology(names, PARTITIONS))


@pytest.fixture
async def client(service: ServiceProcess, names: Names) -> AsyncIterator[SignalingClient]:
    async with SignalingClient(names) as signaling:
        yield signaling


@pytest.fixture
async def emulator(emulator_process: EmulatorProcess) -> AsyncIterator[Emulator]:
    async with Emulator(emulator_process.url) as control:
        await control.fault("none")
        yield control
        await control.fault("none")


@pytest.fixture
def room() -> str:
    return f"{uuid.uuid4()}:{uuid.uuid4().hex[:8]}"
