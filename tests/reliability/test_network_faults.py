"""A TCP proxy between the service and RabbitMQ, and between the service and LiveKit, that forwards,
blackholes (accepts and reads, never forwards or answers) or resets connections: a dead broker
connection is noticed within the heartbeat's bound and recovered from, LiveKit behind a broken network
answers ``livekit_unavailable`` within the deadline, and SIGTERM still ends the service in its grace
period while the broker is unreachable."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
import uuid

import pytest

from testkit.processes import AMQP_URL, ServiceProcess, wait_for
from testkit.proxy import TcpProxy
from tests.reliability.conftest import ConnectLoadClient, ProxyTo, StartService

pytestmark = pytest.mark.slow

HEARTBEAT = 2
DEADLINE = 2.0  # COMMAND_DEADLINE_SECONDS
#: A dead connection that sends nothing is noticed within 3 x (heartbeat + 1) s (aiormq's rule,
#: docs/guarantees.md); one more second of slack for scheduling on a loaded machine.
DETECTION_BOUND = 3 * (HEARTBEAT + 1) + 1.0


def amqp_connected(service: ServiceProcess) -> float:
    return service.metric("livekit_signaling_amqp_connected")


async def test_blackholed_broker_connection_is_noticed_by_the_heartbeat_then_recovers(
    proxy_to: ProxyTo, start_service: StartService, load_client: ConnectLoadClient
) -> None:
    proxy = proxy_to(AMQP_URL, 5672)
    service = await start_service(
        {
            "AMQP_URL": proxy.url,
            "AMQP_HEARTBEAT_SECONDS": str(HEARTBEAT),
            "AMQP_RECONNECT_SECONDS": "0.5",
        }
    )
    client = await load_client()
    room, participant = str(uuid.uuid4()), "p-1"
    event, _ = await client.ask(room, participant, {"action": "join"})
    assert event.message == "join_success"

    proxy.set_mode("blackhole")
    noticed = await asyncio.to_thread(
        wait_for, lambda: not service.is_ready() and amqp_connected(service) == 0, timeout=30
    )
    # A command sent meanwhile waits in its queue.
    waiting = await client.send_command(room, participant, 1, {"action": "create_new_access_token"})
    await asyncio.sleep(1.0)
    answered_while_blackholed = any(e.correlation_id == waiting.message_id for e in client.books.events)

    proxy.set_mode("forward")
    lifted = time.monotonic()
    recovered = await asyncio.to_thread(
        wait_for, lambda: service.is_ready() and amqp_connected(service) == 1, timeout=30
    )
    late = await client.answer_to(waiting.message_id, timeout=20)
    late_after = late.received_at - lifted
    fresh, fresh_latency = await client.ask(room, participant, {"action": "create_new_access_token"})
    reconnects = await asyncio.to_thread(service.metric, "livekit_signaling_amqp_reconnects_total")
    print(
        f"\nAMQP blackhole (heartbeat {HEARTBEAT}s): noticed after "
        f"{noticed if noticed is None else round(noticed, 2)}s (bound {DETECTION_BOUND}s); "
        f"ready again {recovered if recovered is None else round(recovered, 2)}s after the lift; "
        f"command queued during the blackhole answered {late_after:.2f}s after the lift; "
        f"fresh command answered in {fresh_latency:.3f}s; reconnects {reconnects:.0f}; "
        f"proxy accepted {proxy.accepted} connections, reset {proxy.reset_count}"
    )
    assert not answered_while_blackholed
    assert late.message == "credentials"
    assert fresh.message == "credentials"
    assert recovered is not None
    assert reconnects >= 1
    assert noticed is not None and noticed <= DETECTION_BOUND


@pytest.mark.parametrize("mode", ["blackhole", "reset"])
async def test_livekit_behind_a_broken_network_gives_livekit_unavailable_within_the_deadline(
    livekit_proxy: TcpProxy, start_service: StartService, load_client: ConnectLoadClient, mode: str
) -> None:
    service = await start_service({"COMMAND_DEADLINE_SECONDS": str(DEADLINE)}, livekit_url=livekit_proxy.url)
    client = await load_client()
    room = str(uuid.uuid4())
    event, before = await client.ask(room, "p-1", {"action": "join"})
    assert event.message == "join_success"

    livekit_proxy.set_mode(mode)  # type: ignore[arg-type]
    # Several rooms at once: every one of them hears about it, none waits past the deadline.
    answers = await asyncio.gather(
        *(client.ask(str(uuid.uuid4()), f"p-{n}", {"action": "join"}, timeout=DEADLINE + 8) for n in range(5))
    )
    latencies = [latency for _, latency in answers]

    livekit_proxy.set_mode("forward")
    after, after_latency = await client.ask(room, "p-2", {"action": "join"})
    retries = await asyncio.to_thread(service.metric, "livekit_signaling_livekit_retries_total")
    print(
        f"\nLiveKit {mode}: answers {[e.payload.get('error') for e, _ in answers]} after "
        f"{[round(x, 2) for x in latencies]}s (deadline {DEADLINE}s); before {before:.3f}s, after the "
        f"lift {after_latency:.3f}s ({after.message}); LiveKit retries {retries:.0f}; proxy accepted "
        f"{livekit_proxy.accepted}, reset {livekit_proxy.reset_count}"
    )
    assert all(e.payload == {"message": "error", "error": "livekit_unavailable"} for e, _ in answers)
    assert max(latencies) <= DEADLINE + 1.0
    assert after.message == "join_success"


async def test_sigterm_while_the_broker_is_unreachable_still_exits_within_the_grace_period(
    proxy_to: ProxyTo, start_service: StartService
) -> None:
    grace = 3.0
    proxy = proxy_to(AMQP_URL, 5672)
    service = await start_service(
        {
            "AMQP_URL": proxy.url,
            "AMQP_RECONNECT_SECONDS": "0.5",
            "SHUTDOWN_GRACE_SECONDS": str(grace),
        }
    )
    try:
        proxy.set_mode("closed")  # the broker's port is gone: connections reset, new ones refused
        gone = await asyncio.to_thread(wait_for, lambda: not service.is_ready(), timeout=10)
        assert gone is not None
        assert service.process is not None
        signalled = time.monotonic()
        service.process.send_signal(signal.SIGTERM)
        try:
            code: int | None = await asyncio.to_thread(service.process.wait, grace + 7)
        except subprocess.TimeoutExpired:
            code = None
        took = time.monotonic() - signalled
        print(
            f"\nSIGTERM with the broker unreachable: not ready {gone:.2f}s after its port closed; exit "
            f"code {code} after {took:.2f}s (grace {grace}s); "
            f"log tail: {service.logs().splitlines()[-1][:160]}"
        )
        assert code == 0
        assert took <= grace + 2.0
    finally:
        if service.process is not None and service.process.poll() is None:
            await asyncio.to_thread(service.kill)  # it would not go on its own
