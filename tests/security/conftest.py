"""The service under the shipped RabbitMQ permissions: its own vhost and users, imported from
deploy/rabbitmq/*.json with the test's names (testkit/broker_accounts.py), and the service running
as its own user with the controllers as its only trusted publishers."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Iterator

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage

from testkit.amqp import SignalingClient
from testkit.broker_accounts import BrokerAccounts
from testkit.processes import EmulatorProcess, Names, ServiceProcess


@pytest.fixture(scope="session")
def accounts() -> Iterator[BrokerAccounts]:
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is needed to create the test's RabbitMQ users and vhost")
    created = BrokerAccounts(Names())
    asyncio.run(created.create())
    yield created
    created.remove()


def secured_env(accounts: BrokerAccounts) -> dict[str, str]:
    return {
        "AMQP_URL": accounts.url(accounts.service),
        "SIGNALING_TRUSTED_PUBLISHERS": f"{accounts.controller},{accounts.confined_controller}",
        # Every line the service can write is in scope of the token checks.
        "LOG_LEVEL": "DEBUG",
    }


@pytest.fixture(scope="session")
def secured_service(accounts: BrokerAccounts, emulator_process: EmulatorProcess) -> Iterator[ServiceProcess]:
    process = ServiceProcess(
        accounts.names, emulator_process.url, env=secured_env(accounts), name="least-privilege"
    ).start()
    yield process
    process.stop()


@pytest.fixture
async def controller(
    secured_service: ServiceProcess, accounts: BrokerAccounts
) -> AsyncIterator[SignalingClient]:
    """A trusted controller, with exactly the shipped controller permissions."""
    async with accounts.client(accounts.controller) as client:
        yield client


@pytest.fixture
async def dead_letters(
    secured_service: ServiceProcess, accounts: BrokerAccounts
) -> AsyncIterator[list[AbstractIncomingMessage]]:
    """What reaches the service's dead-letter queue while the test runs (read as the service's user,
    whose read permission covers the queue of the same name as its dead-letter exchange)."""
    received: list[AbstractIncomingMessage] = []
    connection = await aio_pika.connect(accounts.url(accounts.service))
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(accounts.names.dead_letter)

        async def collect(message: AbstractIncomingMessage) -> None:
            received.append(message)

        await queue.consume(collect, no_ack=True)
        yield received


async def wait_dead_letter(
    received: list[AbstractIncomingMessage], *fragments: bytes, timeout: float = 10.0
) -> AbstractIncomingMessage:
    """The first dead letter whose body contains every fragment."""
    for _ in range(int(timeout / 0.05)):
        for message in received:
            if all(fragment in message.body for fragment in fragments):
                return message
        await asyncio.sleep(0.05)
    raise AssertionError(f"no dead letter containing {fragments!r}")
