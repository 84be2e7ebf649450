"""Fixtures of the fault-injection tests (tests/ha takes them too). Each test has a topology of its own
(``names``, overriding the session's: these tests start, kill and restart services on it), and
factories whose clean-up runs after the test, passed or failed: services on that topology
(``start_service``), load clients that keep books (``load_client``) and TCP proxies (``proxy_to``, and
``livekit_proxy`` in front of the emulator)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import pytest

from testkit.amqp import delete_queues
from testkit.cleanup import cleanup
from testkit.load import LoadClient
from testkit.processes import AMQP_URL, EmulatorProcess, Names, ServiceProcess
from testkit.proxy import TcpProxy


class StartService(Protocol):
    async def __call__(
        self,
        env: Mapping[str, str] | None = None,
        *,
        livekit_url: str | None = None,
        name: str = "service",
        broker_urls: Sequence[str] = (AMQP_URL,),
    ) -> ServiceProcess: ...


ConnectLoadClient = Callable[..., Awaitable[LoadClient]]
ProxyTo = Callable[[str, int], TcpProxy]


@pytest.fixture
def names() -> Names:
    """A topology for this test alone (the session's belongs to the session's service)."""
    return Names()


@pytest.fixture
async def start_service(names: Names, emulator_process: EmulatorProcess) -> AsyncIterator[StartService]:
    """``await start_service(env)``: a service process on ``names`` (LiveKit: the emulator, unless
    ``livekit_url``), started and ready. After the test every one is stopped, the topology is deleted
    from ``broker_urls`` (where the service's topology is: the system broker, or a cluster's nodes; not a
    proxy in front of it), and the Redis keys under its prefix from the system Redis."""
    started: list[ServiceProcess] = []
    brokers: set[tuple[str, ...]] = set()

    async def start(
        env: Mapping[str, str] | None = None,
        *,
        livekit_url: str | None = None,
        name: str = "service",
        broker_urls: Sequence[str] = (AMQP_URL,),
    ) -> ServiceProcess:
        brokers.add(tuple(broker_urls))
        service = ServiceProcess(names, livekit_url or emulator_process.url, env=env, name=name)
        started.append(service)  # stopped afterwards also when it never became ready
        await asyncio.to_thread(service.start)
        return service

    yield start
    for urls in brokers or {(AMQP_URL,)}:
        await cleanup(names, started, urls=urls)


@pytest.fixture
async def load_client(names: Names, request: pytest.FixtureRequest) -> AsyncIterator[ConnectLoadClient]:
    """``await load_client(**options)``: a ``LoadClient`` on ``names``, connected and named after the
    test; closed after it and its observer queue deleted (also when the broker was down at the end)."""
    clients: list[LoadClient] = []
    async with contextlib.AsyncExitStack() as stack:

        async def connect(**options: Any) -> LoadClient:
            options.setdefault("name", request.node.name)
            client = await stack.enter_async_context(LoadClient(names, **options))
            clients.append(client)
            return client

        yield connect
    for client in clients:
        with contextlib.suppress(Exception):
            await delete_queues([client.observer_queue_name], urls=client.urls)


@pytest.fixture
def proxy_to() -> Iterator[ProxyTo]:
    """``proxy_to(url, default_port)``: a started TCP proxy in front of ``url``'s host and port; stopped
    after the test."""
    with contextlib.ExitStack() as stack:
        yield lambda url, default_port: stack.enter_context(TcpProxy.for_url(url, default_port))


@pytest.fixture
def livekit_proxy(emulator_process: EmulatorProcess, proxy_to: ProxyTo) -> TcpProxy:
    """A TCP proxy in front of the emulator: a service given its ``url`` as LiveKit's reaches the
    emulator through it, so that the test can silence, reset or close that network."""
    return proxy_to(emulator_process.url, 80)
