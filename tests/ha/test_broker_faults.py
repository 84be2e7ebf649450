"""Issue 11: the service on a 3-node RabbitMQ cluster under steady load, while nodes fail.

The service gets every node in ``AMQP_URL``. The load client publishes with confirms from its own
connection (also over every node, starting elsewhere than the service) and collects the events on a
durable quorum queue led by another node than the service's, so that the books survive the fault. Every
confirmed command is counted: answered exactly once, lost, doubled, reordered within its room, and the
longest time without any answer, overall (the issue's bound: 5 s) and within one room (a partition
stalled while others answer; bound 10 s), printed with ``-s``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest

from tests.reliability.harness import (
    PARTITIONS,
    Accounting,
    LoadClient,
    abandoned_commands,
    cleanup,
    started_service,
)
from tests.support.processes import EmulatorProcess, Names, ServiceProcess
from tests.support.rabbit_cluster import RabbitCluster

pytestmark = [pytest.mark.slow, pytest.mark.ha]

ROOMS = 20
PACE = 0.25  # seconds between a room's commands: ~70 commands/s in all
#: The issue's bound: answers resume within this after a node is lost.
RESUME_SECONDS = 5.0
#: A generous bound for one room, whose partition queue may elect a new leader (or whose command's
#: publish waits for that) after the others answer again: up to 5.4 s measured in a rolling restart.
#: It catches a partition that stays stalled; the issue's 5 s is about answers resuming.
ROOM_RESUME_SECONDS = 10.0
#: The events' queue: replicated, and led by the node the load client declares it on.
COLLECTOR = {"x-queue-type": "quorum", "x-queue-leader-locator": "client-local"}


@dataclass
class Figures:
    books: Accounting
    #: The longest times without any answer, and without an answer in one room (a partition's outage
    #: while the others answer), each with when it began relative to the fault; longest first.
    gaps: list[tuple[float, float]]
    room_gaps: list[tuple[float, float]]
    reconnects: float

    @property
    def gap(self) -> float:
        """The longest time without any answer."""
        return self.gaps[0][0] if self.gaps else 0.0

    @property
    def room_gap(self) -> float:
        """The longest time some room waited for an answer (at least ``gap``)."""
        return self.room_gaps[0][0] if self.room_gaps else 0.0

    def assert_resumed(self) -> None:
        assert self.gap < RESUME_SECONDS, self.line()
        assert self.room_gap < ROOM_RESUME_SECONDS, self.line()

    @property
    def answered_once(self) -> int:
        return self.books.confirmed - len(self.books.missing) - len(self.books.duplicated)

    def line(self) -> str:
        b = self.books

        def shown(gaps: list[tuple[float, float]]) -> str:
            return ", ".join(f"{gap:.2f}s at {at:+.1f}s" for gap, at in gaps)

        return (
            f"confirmed={b.confirmed} answered exactly once={self.answered_once} lost={len(b.missing)} "
            f"doubled={len(b.duplicated)} (same-id copies {b.copies}) reordered rooms={len(b.out_of_order)}; "
            f"longest gaps without an answer: any room {shown(self.gaps)}, one room {shown(self.room_gaps)} "
            f"(from the fault); reconnects {self.reconnects:.0f}"
        )


async def start_on(
    cluster: RabbitCluster, livekit: EmulatorProcess, topology: Names, node: str
) -> ServiceProcess:
    """The service with every node in ``AMQP_URL``, ``node`` first; checks it is on that node."""
    service = await started_service(topology, livekit.url, {"AMQP_URL": cluster.amqp_url(first=node)})
    assert service.status()["amqp_node"] == cluster.nodes[node].address
    return service


def partition_queues(topology: Names) -> list[str]:
    return [f"{topology.queue}.{n}" for n in range(PARTITIONS)]


async def under_load(
    client: LoadClient, service: ServiceProcess, fault: Callable[[], Awaitable[None]], *, after: float
) -> tuple[Figures, float]:
    """Steady load; ``fault`` after 2 s; the load goes on for ``after`` seconds once ``fault`` returned;
    then every confirmed command is accounted for. Returns the figures and when the fault began."""
    stop = asyncio.Event()
    load = asyncio.create_task(client.steady_load(ROOMS, stop, pace=PACE))
    try:
        await asyncio.sleep(2.0)
        fault_began = time.monotonic()
        await fault()
        await asyncio.sleep(after)
    finally:
        stop.set()
        await asyncio.wait_for(load, 120)
    answered = await client.wait_answered(timeout=60)
    books = client.books.accounting(returned_by_broker=abandoned_commands(service))
    gaps = [(gap, began - fault_began) for gap, began in client.books.answer_gaps()]
    room_gaps = [(gap, began - fault_began) for gap, began in client.books.answer_gaps(per_room=True)]
    reconnects = await asyncio.to_thread(service.metric, "livekit_signaling_amqp_reconnects_total")
    figures = Figures(books, gaps, room_gaps, reconnects)
    assert answered, books.summary()
    return figures, fault_began


def report(title: str, figures: Figures, service: ServiceProcess, extra: str = "") -> None:
    logs = service.logs().splitlines()
    refused = sum("refused by the broker" in line for line in logs)
    requeued = sum("requeued" in line for line in logs)
    print(
        f"\n{title}: {figures.line()}; {extra}; publishes refused and retried {refused}, requeued {requeued}"
    )
    print("\n".join(line for line in logs if "RabbitMQ node" in line))
    print(f"service log: {service.log_path}")


async def test_stopping_the_node_the_service_is_on_moves_it_to_another_node(
    cluster: RabbitCluster, livekit: EmulatorProcess, topology: Names
) -> None:
    """(1) ``rabbitmqctl stop`` of the service's node, kept down: answers resume within 5 s."""
    service = await start_on(cluster, livekit, topology, "a")
    client = LoadClient(topology, urls=cluster.urls(first="b"), observer_arguments=COLLECTOR)
    stopped_for = 0.0
    try:
        async with client:

            async def stop_service_node() -> None:
                nonlocal stopped_for
                stopped_for = await asyncio.to_thread(cluster.stop, "a")

            figures, _ = await under_load(client, service, stop_service_node, after=8.0)
            moved_to = service.status()["amqp_node"]
            report(
                "stop the service's node (a), kept down",
                figures,
                service,
                f"stop took {stopped_for:.1f}s, service now on {cluster.node_at(moved_to)}",
            )
            assert cluster.node_at(moved_to) != "a"
            figures.books.assert_exactly_once_in_order()
            figures.assert_resumed()
    finally:
        await cleanup(topology, [service], queues=[client.observer_queue_name], urls=cluster.urls())
        await asyncio.to_thread(cluster.start, "a")


async def test_killing_the_node_that_leads_most_partitions_keeps_the_service_consuming(
    cluster: RabbitCluster, livekit: EmulatorProcess, topology: Names
) -> None:
    """(2) ``kill -9`` of the node that leads most partition queues, the service connected to another
    one: their leaders move, the service keeps consuming on its connection; answers resume within 5 s.
    Also: the ``balanced`` leader locator spread the partitions over every node."""
    service = await start_on(cluster, livekit, topology, "a")
    leaders = await asyncio.to_thread(cluster.leaders, partition_queues(topology))
    target = leaders.most_common(1)[0][0]
    client: LoadClient | None = None
    try:
        assert set(leaders) == set(cluster.nodes), f"partition leaders not spread: {dict(leaders)}"
        if target == "a":
            # The kill must hit the partitions' leaders, not the service's connection (test 1 does that).
            await asyncio.to_thread(service.stop)
            service = await start_on(cluster, livekit, topology, "b")
        service_node = cluster.node_at(service.status()["amqp_node"])
        client_node = next(n for n in cluster.nodes if n not in {target, service_node})
        client = LoadClient(topology, urls=cluster.urls(first=client_node), observer_arguments=COLLECTOR)
        async with client:

            async def kill_leader() -> None:
                await asyncio.to_thread(cluster.kill, target)

            figures, _ = await under_load(client, service, kill_leader, after=8.0)
            after = await asyncio.to_thread(cluster.leaders, partition_queues(topology), via=service_node)
            report(
                f"kill -9 the node leading most partitions ({target})",
                figures,
                service,
                f"partition leaders before {dict(sorted(leaders.items()))}, "
                f"after {dict(sorted(after.items()))}; service on {service_node}, collector on {client_node}",
            )
            assert target not in after, "a partition is still led by the killed node"
            assert cluster.node_at(service.status()["amqp_node"]) == service_node, "the service reconnected"
            figures.books.assert_exactly_once_in_order()
            figures.assert_resumed()
    finally:
        observer = [client.observer_queue_name] if client is not None else []
        await cleanup(topology, [service], queues=observer, urls=cluster.urls())
        await asyncio.to_thread(cluster.start, target)


async def test_rolling_restart_of_every_node_loses_nothing(
    cluster: RabbitCluster, livekit: EmulatorProcess, topology: Names
) -> None:
    """(3) Each node stopped and started again in turn, as an upgrade does (each only once no quorum
    queue depends on it: ``rabbitmq-queues check_if_node_is_quorum_critical``): nothing lost."""
    service = await start_on(cluster, livekit, topology, "a")
    client = LoadClient(topology, urls=cluster.urls(first="b"), observer_arguments=COLLECTOR)
    steps: list[str] = []
    try:
        async with client:

            async def rolling_restart() -> None:
                for node in cluster.nodes:
                    began = time.monotonic()
                    await asyncio.to_thread(cluster.wait_quorum_safe, node)
                    await asyncio.to_thread(cluster.stop, node)
                    await asyncio.to_thread(cluster.start, node)
                    steps.append(f"{node} {time.monotonic() - began:.1f}s")

            figures, _ = await under_load(client, service, rolling_restart, after=5.0)
            report("rolling restart a, b, c", figures, service, f"restarts {', '.join(steps)}")
            figures.books.assert_exactly_once_in_order()
    finally:
        await cleanup(topology, [service], queues=[client.observer_queue_name], urls=cluster.urls())
        for node in cluster.nodes:
            if not await asyncio.to_thread(cluster.is_running, node):
                await asyncio.to_thread(cluster.start, node)
