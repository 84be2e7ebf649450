"""The service on a 3-node RabbitMQ cluster whose nodes are hosts of a test network, under steady load,
while the network between them fails: the service's node cut off from its peers while the service
still reaches it (under ``pause_minority`` and ``autoheal``), Jepsen's majorities ring, one link
between two nodes lost, Jepsen's nemesis of random halves, and a flapping link between the service and
its node. The service (host ``service``) has every node in ``AMQP_URL``, node a first; the load client
(the root namespace, which no cut touches) publishes with confirms through node b and collects the
events on a quorum queue led by b; when b is the minority it moves too, and its own outage counts in
the gaps (the nemesis).

Every confirmed command is counted (``testkit.faults``): answered exactly once, lost, doubled,
reordered within its room, copies absorbed and where they came from, and the longest time without an
answer; ``-s`` prints each scenario's figures and its row of the results table of
docs/high-availability/partitions.md. How long each fault lasts is ``SCHEDULE``'s (conftest.py):
short in CI, rabbitmq/jepsen's own with ``PARTITIONS_SCHEDULE=jepsen``."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest

from testkit.faults import REPLICATED_OBSERVER, Figures, report, under_load
from testkit.netns import TestNetwork
from testkit.rabbit_cluster import RabbitCluster
from tests.partitions.conftest import RABBIT_NODES, SCHEDULE, SHORT
from tests.reliability.conftest import ConnectLoadClient, StartService

pytestmark = [pytest.mark.slow, pytest.mark.partitions]

ROOMS = 20
PACE = 0.5  # seconds between a room's commands: 40 commands/s in all
#: After a node declared its peers down: RabbitMQ stopping the paused node's application and closing
#: its connections, the service's next connection attempt (AMQP_RECONNECT_SECONDS, 2 s), restoring its
#: channels and consumers on the next node, a quorum queue electing a leader.
MOVE_SECONDS = 8.0
#: Answers stop at most this long when the service's node pauses (it notices the partition first).
PAUSE_BOUND = SCHEDULE.detection + MOVE_SECONDS
#: Load after the fault, so that the answers after the heal are counted too.
AFTER_SECONDS = 2.0

Fault = Callable[[], Awaitable[None]]


@dataclass
class Stage:
    """The service on node a (host ``service``), the load client through node b, and the network."""

    cluster: RabbitCluster
    network: TestNetwork
    start_service: StartService
    load_client: ConnectLoadClient

    async def run(
        self, title: str, fault: Fault, *, duration: str, extra: Callable[[], str] = str
    ) -> Figures:
        """The scenario under load, the network healed whatever happens; prints its figures and its
        row of the results table; checks every confirmed command was answered once, in order."""
        cluster, network = self.cluster, self.network
        service = await self.start_service(
            {"AMQP_URL": cluster.amqp_url(first="a")},
            broker_urls=cluster.urls(),
            host=network.hosts["service"],
        )
        assert service.status()["amqp_node"] == cluster.nodes["a"].address
        client = await self.load_client(urls=cluster.urls(first="b"), observer_arguments=REPLICATED_OBSERVER)
        try:
            figures, _ = await under_load(client, service, fault, after=AFTER_SECONDS, rooms=ROOMS, pace=PACE)
        finally:
            network.heal()
        report(title, figures, service, extra())
        print(figures.row(title, duration))
        figures.books.assert_exactly_once_in_order()
        return figures


@pytest.fixture
def stage(
    cluster: RabbitCluster,
    network: TestNetwork,
    start_service: StartService,
    load_client: ConnectLoadClient,
    partition_handling: str,
) -> Stage:
    """Every scenario runs under ``partition_handling`` (``pause_minority`` unless parametrized). It is
    set up last so that it is torn down first: the cluster is whole again before the service's topology
    and the observer queue are deleted (a quorum queue deleted while a member's node is paused or split
    off leaves that member behind)."""
    return Stage(cluster, network, start_service, load_client)


class Watch:
    """Which nodes accept AMQP connections, sampled every second from the gateway while a fault lasts."""

    def __init__(self, cluster: RabbitCluster) -> None:
        self.cluster = cluster
        self.samples: list[str] = []

    async def during(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await asyncio.to_thread(self._sample_now)
            await asyncio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))

    def _sample_now(self) -> None:
        letters = [letter if self.cluster.listening(letter) else "-" for letter in RABBIT_NODES]
        self.samples.append("".join(letters))

    def paused(self, letter: str) -> bool:
        return any(letter not in sample for sample in self.samples)

    def line(self) -> str:
        return f"nodes accepting connections, each second: {' '.join(self.samples)}"


#: Scenario 1's modes; the long schedule adds RabbitMQ's default, ``ignore``.
MODES = ["pause_minority", "autoheal"] + ([] if SCHEDULE is SHORT else ["ignore"])


@pytest.mark.parametrize("partition_handling", MODES, indirect=True)
async def test_the_service_node_cut_off_from_its_peers(stage: Stage, partition_handling: str) -> None:
    """(1) Node a, the service's, cut off from b and c (both ways) while the service still reaches it.

    - ``pause_minority``: a declares b and c down within the detection time, pauses (closes every
      connection, accepts none) and the service moves to the next node: answers stop for at most the
      detection time and the move. Once the cut heals, a starts again by itself.
    - ``autoheal``: nothing happens during the partition. a keeps the service's connection, but its
      quorum queue members are a minority and make no progress: no answer until the heal. Then a
      restarts (not in the winning partition) and the service moves.
    - ``ignore`` (long schedule): as ``autoheal`` during the partition; at the heal nothing restarts,
      the quorum queues find their members again by themselves, and the service stays on a."""
    network, watch = stage.network, Watch(stage.cluster)
    healed_at = 0.0

    async def cut_a() -> None:
        nonlocal healed_at
        network.isolate("a", from_=["b", "c"])
        await watch.during(SCHEDULE.partition)
        network.heal()
        healed_at = time.monotonic()

    try:
        figures = await stage.run(
            f"a cut off from b and c, the service still on it ({partition_handling})",
            cut_a,
            duration=f"{SCHEDULE.partition:.0f} s",
            extra=watch.line,
        )
    finally:
        if partition_handling == "ignore":
            # RabbitMQ's own state stays split until the side not trusted is restarted, as RabbitMQ's
            # documentation tells an operator to ("Recovering From a Split-Brain").
            await asyncio.to_thread(stage.cluster.stop, "a")
            await asyncio.to_thread(stage.cluster.start, "a")
    if partition_handling != "ignore":
        assert figures.reconnects >= 1, "the service never left node a"
    if partition_handling == "pause_minority":
        assert watch.paused("a"), f"node a, a minority, did not pause; {watch.line()}"
        figures.assert_resumed(PAUSE_BOUND, PAUSE_BOUND + MOVE_SECONDS)
    else:
        assert not watch.paused("a"), f"node a paused under autoheal; {watch.line()}"
        resumed = figures.first_answer_after(healed_at) - healed_at
        assert resumed < MOVE_SECONDS, f"answers resumed {resumed:.1f}s after the heal; {figures.line()}"
        figures.assert_resumed(SCHEDULE.partition + MOVE_SECONDS, SCHEDULE.partition + 2 * MOVE_SECONDS)


async def test_a_majorities_ring(stage: Stage, partition_handling: str) -> None:
    """(2) Jepsen's majorities ring (``pause_minority``): every node receives from a majority of the
    cluster, none from the same one. Jepsen drops one direction per grudge; on three nodes that breaks
    one direction of every link, so no connection between nodes survives: each node declares both
    peers down and pauses, no node accepts a connection, nothing is answered until the ring heals. Then
    every node starts again (the fixture restarts one still paused a minute later, as an operator
    would: once in two runs of the long schedule a node stayed paused), the service reconnects, and
    answers resume within the move."""
    network, watch = stage.network, Watch(stage.cluster)
    order = random.sample(RABBIT_NODES, len(RABBIT_NODES))
    grudge: dict[str, set[str]] = {}
    healed_at = 0.0

    async def ring() -> None:
        nonlocal healed_at
        grudge.update(network.majorities_ring(order))
        await watch.during(SCHEDULE.partition)
        network.heal()
        healed_at = time.monotonic()

    figures = await stage.run(
        "majorities ring",
        ring,
        duration=f"{SCHEDULE.partition:.0f} s",
        extra=lambda: f"grudge {grudge}; {watch.line()}",
    )
    resumed = figures.first_answer_after(healed_at) - healed_at
    assert resumed < SCHEDULE.detection + MOVE_SECONDS, f"answers resumed {resumed:.1f}s after the heal"
    figures.assert_resumed(
        SCHEDULE.partition + SCHEDULE.detection + MOVE_SECONDS,
        SCHEDULE.partition + SCHEDULE.detection + 2 * MOVE_SECONDS,
    )


@pytest.mark.skipif(SCHEDULE is SHORT, reason="a scenario of the long schedule (PARTITIONS_SCHEDULE=jepsen)")
async def test_one_link_between_two_nodes_lost(stage: Stage, partition_handling: str) -> None:
    """(2b) The link between a and c lost, both ways, b still reaching both: a partial partition in
    which every node still sees a majority ({a, b}, {a, b, c}, {b, c}: the symmetric ring of three).
    RabbitMQ (``pause_minority``) pauses a node that learns of the partial partition "until the entire
    cluster recovers". When only one end does (a or c), the quorum queues keep a majority and the
    service moves; when both do, b is left alone, no queue has a majority, and nothing is answered until
    the link is back. Answers resume within the move after the heal at the latest."""
    network, watch = stage.network, Watch(stage.cluster)

    async def cut_link() -> None:
        network.cut("a", "c")
        await watch.during(SCHEDULE.partition)
        network.heal()

    figures = await stage.run(
        "link a-c lost",
        cut_link,
        duration=f"{SCHEDULE.partition:.0f} s",
        extra=watch.line,
    )
    figures.assert_resumed(SCHEDULE.partition + MOVE_SECONDS, SCHEDULE.partition + 2 * MOVE_SECONDS)


async def test_nemesis_random_halves(stage: Stage, partition_handling: str) -> None:
    """(3) rabbitmq/jepsen's nemesis (``random-partition-halves``, ``pause_minority``): again and again,
    the network whole for ``before`` seconds, then the nodes shuffled and cut into a minority of one and
    a majority of two for ``partition`` seconds, until ``time_limit``; then healed. The service and the
    load client reach every node. Whichever node is the minority pauses; when it is the service's, the
    service moves: answers stop for at most the detection time and the move, each time."""
    seed = int(os.environ.get("PARTITIONS_SEED", random.randrange(1 << 30)))
    shuffle = random.Random(seed)
    rounds: list[str] = []

    async def nemesis() -> None:
        deadline = time.monotonic() + SCHEDULE.time_limit
        while time.monotonic() < deadline:
            await asyncio.sleep(min(SCHEDULE.before, max(0.0, deadline - time.monotonic())))
            if time.monotonic() >= deadline:
                break
            nodes = shuffle.sample(RABBIT_NODES, len(RABBIT_NODES))
            minority, majority = nodes[: len(nodes) // 2], nodes[len(nodes) // 2 :]
            stage.network.partition(minority, majority)
            rounds.append(f"{''.join(minority)}|{''.join(majority)}")
            await asyncio.sleep(min(SCHEDULE.partition, max(0.0, deadline - time.monotonic())))
            stage.network.heal()

    figures = await stage.run(
        "nemesis: random halves",
        nemesis,
        duration=f"{SCHEDULE.time_limit:.0f} s ({SCHEDULE.partition:.0f} s cuts)",
        extra=lambda: f"seed {seed} (PARTITIONS_SEED), partitions {', '.join(rounds)}",
    )
    assert rounds, "no partition within the time limit"
    figures.assert_resumed(PAUSE_BOUND, PAUSE_BOUND + MOVE_SECONDS)


async def test_a_flapping_link_between_the_service_and_its_node(
    stage: Stage, partition_handling: str
) -> None:
    """(5) The link between the service and node a cut (silently: packets vanish) and restored every
    ``flap_every`` seconds. Each cut is shorter than the AMQP heartbeat's timeout and Erlang's
    detection: TCP retransmits across it, the connection stays, nothing reconnects; answers are late by
    a cut and a retransmission at most."""
    flaps = 0

    async def flapping() -> None:
        nonlocal flaps
        deadline = time.monotonic() + SCHEDULE.flap_for
        while time.monotonic() < deadline:
            stage.network.cut("service", "a", silent=True)
            flaps += 1
            await asyncio.sleep(SCHEDULE.flap_every)
            stage.network.heal()
            await asyncio.sleep(SCHEDULE.flap_every)

    figures = await stage.run(
        f"flapping link service-a ({SCHEDULE.flap_every:.0f} s cut, {SCHEDULE.flap_every:.0f} s whole)",
        flapping,
        duration=f"{SCHEDULE.flap_for:.0f} s",
        extra=lambda: f"{flaps} cuts",
    )
    assert figures.reconnects == 0, "the service reconnected although no cut outlasted its heartbeat"
    # A cut, then TCP's retransmission timer (doubling from 0.2 s) finding the link back.
    bound = 2 * SCHEDULE.flap_every + 1.0
    figures.assert_resumed(bound, bound)
