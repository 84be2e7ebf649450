"""The LiveKit adapter's attempts, against the emulator in this process: the first attempt runs without
retry machinery, and what follows a transient failure keeps the documented back-off and bound."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from livekit_signaling.domain.errors import LiveKitRejected, LiveKitUnavailable
from livekit_signaling.emulator import EmulatorFault, LiveKitEmulator
from livekit_signaling.livekit.adapter import LiveKitAdapter
from livekit_signaling.telemetry.metrics import Metrics

KEY, SECRET = "adapter-key", "adapter-secret-" + "x" * 32
ATTEMPTS = 3


@pytest.fixture
async def emulator() -> AsyncIterator[LiveKitEmulator]:
    emu = LiveKitEmulator(KEY, SECRET)
    await emu.start()
    yield emu
    await emu.stop()


async def _adapter(emulator: LiveKitEmulator, metrics: Metrics, secret: str = SECRET) -> LiveKitAdapter:
    adapter = LiveKitAdapter(
        url=emulator.url,
        api_key=KEY,
        api_secret=secret,
        request_timeout_seconds=2.0,
        attempts=ATTEMPTS,
        max_concurrent_requests=8,
        metrics=metrics,
    )
    await adapter.start()
    return adapter


def _retries(metrics: Metrics, method: str) -> float:
    value = metrics.registry.get_sample_value("livekit_signaling_livekit_retries_total", {"method": method})
    return value or 0.0


async def test_a_call_that_succeeds_is_made_once_and_counts_no_retry(emulator: LiveKitEmulator) -> None:
    metrics = Metrics()
    adapter = await _adapter(emulator, metrics)
    try:
        assert await adapter.list_participants("room-a") == []
    finally:
        await adapter.close()
    assert emulator.calls.count("ListParticipants") == 1
    assert _retries(metrics, "ListParticipants") == 0


async def test_a_transient_failure_is_retried_after_the_first_back_off(emulator: LiveKitEmulator) -> None:
    metrics = Metrics()
    adapter = await _adapter(emulator, metrics)
    emulator.fault = EmulatorFault.UNAVAILABLE

    async def recover_after_first_attempt() -> float:
        for _ in range(5_000):  # the first attempt arrives within milliseconds
            if "ListParticipants" in emulator.calls:
                break
            await asyncio.sleep(0.001)
        emulator.fault = EmulatorFault.NONE
        return time.monotonic()

    try:
        recovering = asyncio.create_task(recover_after_first_attempt())
        assert await adapter.list_participants("room-b") == []
        answered = time.monotonic()
    finally:
        await adapter.close()
    first_failed = await recovering
    assert emulator.calls.count("ListParticipants") == 2
    assert _retries(metrics, "ListParticipants") == 1
    # 50 ms back-off (+ up to 100 ms jitter) between the failed attempt and the one that succeeded.
    assert answered - first_failed >= 0.045


async def test_a_lasting_outage_ends_after_the_configured_attempts(emulator: LiveKitEmulator) -> None:
    metrics = Metrics()
    adapter = await _adapter(emulator, metrics)
    emulator.fault = EmulatorFault.UNAVAILABLE
    try:
        with pytest.raises(LiveKitUnavailable):
            await adapter.list_participants("room-c")
    finally:
        await adapter.close()
    assert emulator.calls.count("ListParticipants") == ATTEMPTS
    assert _retries(metrics, "ListParticipants") == ATTEMPTS - 1


async def test_a_rejection_is_not_retried(emulator: LiveKitEmulator) -> None:
    metrics = Metrics()
    adapter = await _adapter(emulator, metrics, secret="not-" + SECRET)
    try:
        with pytest.raises(LiveKitRejected):
            await adapter.list_participants("room-d")
    finally:
        await adapter.close()
    assert emulator.calls.count("ListParticipants") == 1
    assert _retries(metrics, "ListParticipants") == 0
