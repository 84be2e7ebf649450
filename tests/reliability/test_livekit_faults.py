"""LiveKit answers 503, refuses connections (its port closed, as when its process is gone) or hangs;
each time the sender hears ``livekit_unavailable`` within the deadline, service resumes when LiveKit
does, and repeated outages do not leak file descriptors."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from testkit.emulator import Emulator
from testkit.proxy import TcpProxy
from tests.reliability.conftest import ConnectLoadClient, StartService

pytestmark = pytest.mark.slow

DEADLINE = 2.0
CYCLES = 5
ROOMS_PER_OUTAGE = 4
#: Descriptors the process may gain between the first and the last cycle (keep-alive connections to
#: LiveKit come and go, the broker connection's are fixed); a leak grows with every cycle.
FD_TOLERANCE = 8


async def test_livekit_outages_answer_livekit_unavailable_and_leak_nothing(
    emulator: Emulator,
    livekit_proxy: TcpProxy,
    start_service: StartService,
    load_client: ConnectLoadClient,
) -> None:
    # The service reaches the emulator through a proxy: closing the proxy's port is LiveKit's process
    # gone (connection refused); the emulator's own fault modes give 503 and hanging calls.
    service = await start_service({"COMMAND_DEADLINE_SECONDS": str(DEADLINE)}, livekit_url=livekit_proxy.url)
    client = await load_client()

    async def outage(kind: str) -> list[float]:
        if kind == "refused":
            livekit_proxy.set_mode("closed")
        else:
            await emulator.fault(kind)
        answers = await asyncio.gather(
            *(
                client.ask(str(uuid.uuid4()), f"p-{n}", {"action": "join"}, timeout=DEADLINE + 8)
                for n in range(ROOMS_PER_OUTAGE)
            )
        )
        if kind == "refused":
            livekit_proxy.set_mode("forward")
        else:
            await emulator.fault("none")
        for event, _ in answers:
            assert event.payload == {"message": "error", "error": "livekit_unavailable"}, (kind, event.body)
        event, _ = await client.ask(str(uuid.uuid4()), "p-after", {"action": "join"})
        assert event.message == "join_success", (kind, event.body)
        return [latency for _, latency in answers]

    event, _ = await client.ask(str(uuid.uuid4()), "p-0", {"action": "join"})
    assert event.message == "join_success"
    fds_start = service.open_fds()
    fds: list[int] = []
    worst: dict[str, float] = {}
    for _cycle in range(CYCLES):
        for kind in ("unavailable", "refused", "hang"):
            latencies = await outage(kind)
            worst[kind] = max(worst.get(kind, 0.0), *latencies)
        await asyncio.sleep(0.2)
        fds.append(service.open_fds())
    unavailable = await asyncio.to_thread(
        service.metric, "livekit_signaling_commands_total", action="join", outcome="livekit_unavailable"
    )
    worst_rounded = {k: round(v, 2) for k, v in worst.items()}
    print(
        f"\nLiveKit outages: {CYCLES} cycles x (503, refused, hang) x {ROOMS_PER_OUTAGE} rooms; "
        f"worst time to livekit_unavailable {worst_rounded}s (deadline {DEADLINE}s); livekit_unavailable "
        f"answers {unavailable:.0f}; open fds at start {fds_start}, after each cycle {fds}"
    )
    assert unavailable == CYCLES * 3 * ROOMS_PER_OUTAGE
    assert max(worst.values()) <= DEADLINE + 1.0
    assert fds[-1] <= fds[0] + FD_TOLERANCE, fds
    assert service.process is not None and service.process.poll() is None
