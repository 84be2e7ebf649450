"""The state store (Redis) fails briefly under the service, through a TCP proxy. The ack policy requeues
a command whose store call failed; these tests check what that does to the per-room order and to
commands that arrive during a short store outage."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from testkit.processes import REDIS_URL
from testkit.proxy import TcpProxy
from tests.reliability.conftest import ConnectLoadClient, ProxyTo, StartService

pytestmark = pytest.mark.slow

COMMANDS = 10


@pytest.fixture
def redis_proxy(proxy_to: ProxyTo) -> TcpProxy:
    """A TCP proxy in front of the test Redis, for the service to reach it through."""
    return proxy_to(REDIS_URL, 6379)


async def test_a_store_failure_does_not_let_later_commands_of_the_room_overtake(
    redis_proxy: TcpProxy, start_service: StartService, load_client: ConnectLoadClient
) -> None:
    service = await start_service({"REDIS_URL": redis_proxy.url})
    client = await load_client()
    room, participant = str(uuid.uuid4()), "p-1"
    await client.send_command(room, participant, 0, {"action": "join"})
    assert await client.wait_until(lambda: len(client.books.events) == 1, timeout=10)
    await asyncio.sleep(0.5)  # recorded in the store and acknowledged as well
    # Redis goes silent: command 1 waits on it, 2..n wait behind it in the replica.
    redis_proxy.set_mode("blackhole")
    for number in range(1, COMMANDS + 1):
        await client.send_command(room, participant, number, {"action": "create_new_access_token"})
    await asyncio.sleep(0.5)
    # Back: command 1's dead connection is reset (its store call fails, it is requeued).
    redis_proxy.set_mode("forward")
    await client.wait_answered(timeout=30, quiet=0.5)
    books = client.books.accounting()
    order = [client.books.commands[e.correlation_id or ""].number for e in client.books.events]
    requeued = [x for x in service.log_records() if x["message"].startswith("command failed, requeued")]
    print(f"\nstore blip: answer order {order}; requeued {len(requeued)}; {books.summary()}")
    assert not books.missing
    assert not books.out_of_order, order


async def test_a_one_second_store_outage_loses_no_command(
    redis_proxy: TcpProxy, start_service: StartService, load_client: ConnectLoadClient
) -> None:
    await start_service({"REDIS_URL": redis_proxy.url})
    client = await load_client()
    await client.watch_dead_letters()
    redis_proxy.set_mode("reset")  # Redis refuses (connections reset at once)
    sent = await asyncio.gather(
        *(client.send_command(str(uuid.uuid4()), "p-1", 0, {"action": "join"}) for _ in range(5))
    )
    await asyncio.sleep(1.0)
    redis_proxy.set_mode("forward")
    answered = await client.wait_answered(timeout=8, quiet=0.5)
    books = client.books.accounting()
    print(
        f"\nstore outage of 1 s: {len(sent)} commands, answered {len(sent) - len(books.missing)}, "
        f"dead-lettered {len(client.dead_letters)} (reasons {client.dead_letter_reasons(60)})"
    )
    assert answered and not books.missing
    assert not client.dead_letters
