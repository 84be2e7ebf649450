"""The suite's fixtures, under one name each: the LiveKit emulator process (``emulator_process``) and a
control client of it (``emulator``), the uuid-named topology (``names``), the service as a process on it
(``service``), a broker client (``client``) and a fresh room id (``room``). A directory whose tests need
another scope overrides the fixture of the same name in its own conftest.py (tests/reliability:
``names`` per test)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from testkit.amqp import SignalingClient, delete_topology
from testkit.emulator import Emulator
from testkit.processes import EmulatorProcess, Names, ServiceProcess


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
