"""Fixtures of the fault-injection tests: one LiveKit emulator process per module, a uuid-named topology
per test (deleted afterwards, with the test's Redis keys), and an emulator control client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.support.emulator import Emulator
from tests.support.processes import EmulatorProcess, Names


@pytest.fixture(scope="module")
def livekit() -> Iterator[EmulatorProcess]:
    process = EmulatorProcess()
    yield process
    process.stop()


@pytest.fixture
async def livekit_control(livekit: EmulatorProcess) -> AsyncIterator[Emulator]:
    async with Emulator(livekit.url) as control:
        await control.fault("none")
        yield control
        await control.fault("none")


@pytest.fixture
def topology() -> Names:
    return Names()
