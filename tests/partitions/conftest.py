"""Fixtures of the partition tests: one test network for the session (a namespace per RabbitMQ node,
per Redis server and Sentinel, and one for the service: ``testkit.netns``), the LiveKit emulator on its
gateway, a 3-node RabbitMQ cluster on its hosts, and the schedule the tests run (``SCHEDULE``). The
network is healed and the cluster whole again after every test; after the session nothing of the
network may be left on the machine."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest

from testkit.netns import TestNetwork
from testkit.processes import EmulatorProcess
from testkit.rabbit_cluster import ClusterError, RabbitCluster
from tests.reliability.conftest import load_client, names, start_service

__all__ = [
    "cluster",
    "emulator_process",
    "load_client",
    "names",
    "network",
    "partition_handling",
    "start_service",
]

RABBIT_NODES = ("a", "b", "c")
REDIS_NODES = ("redis-0", "redis-1", "redis-2")
SENTINELS = ("sentinel-0", "sentinel-1", "sentinel-2")


@dataclass(frozen=True)
class Schedule:
    """How long the faults last. ``short`` is what CI runs; ``jepsen`` is rabbitmq/jepsen's own
    (``ci/jepsen-test.sh``: ``--time-limit 180 --time-before-partition 20 --partition-duration 30
    --net-ticktime 15``), chosen with ``PARTITIONS_SCHEDULE=jepsen``."""

    name: str
    #: Erlang's ``net_ticktime`` on the cluster's nodes: a node whose peers stop answering declares them
    #: down after 0.75-1.25 times this, and only then does partition handling act.
    net_ticktime: int
    #: How long each partition lasts: longer than the detection, or no node ever notices it.
    partition: float
    #: The nemesis: a partition, then this long whole, again and again for ``time_limit`` seconds.
    before: float
    time_limit: float
    #: The flapping link: cut and restored every ``flap_every`` seconds, for ``flap_for`` seconds.
    flap_for: float
    #: How long the Redis master stays cut off: the Sentinels promote a replica within 3 s.
    redis_partition: float
    flap_every: float = 2.0

    @property
    def detection(self) -> float:
        """The longest a node takes to declare a silent peer down."""
        return 1.25 * self.net_ticktime


SHORT = Schedule(
    "short", net_ticktime=5, partition=10.0, before=1.0, time_limit=22.0, flap_for=8.0, redis_partition=6.0
)
JEPSEN = Schedule(
    "jepsen",
    net_ticktime=15,
    partition=30.0,
    before=20.0,
    time_limit=180.0,
    flap_for=30.0,
    redis_partition=30.0,
)
SCHEDULE = JEPSEN if os.environ.get("PARTITIONS_SCHEDULE") == "jepsen" else SHORT


@pytest.fixture(scope="session")
def network() -> Iterator[TestNetwork]:
    network = TestNetwork([*RABBIT_NODES, "service", *REDIS_NODES, *SENTINELS])
    with network:
        yield network
    assert not network.leftovers(), f"left behind: {network.leftovers()}"


@pytest.fixture(scope="session")
def emulator_process(network: TestNetwork) -> Iterator[EmulatorProcess]:
    """LiveKit, on the network's gateway (the root namespace), where every host reaches it."""
    process = EmulatorProcess(bind=network.gateway)
    yield process
    process.stop()


@pytest.fixture(scope="session")
def cluster(network: TestNetwork) -> Iterator[RabbitCluster]:
    hosts = {letter: network.hosts[letter] for letter in RABBIT_NODES}
    with RabbitCluster(hosts=hosts, net_ticktime=SCHEDULE.net_ticktime) as started:
        print(f"\nRabbitMQ cluster on test hosts started in {started.started_in:.1f}s ({SCHEDULE})")
        yield started


@pytest.fixture
async def partition_handling(
    request: pytest.FixtureRequest, network: TestNetwork, cluster: RabbitCluster
) -> AsyncIterator[str]:
    """``cluster_partition_handling`` for one test (``pause_minority``, the Cluster Operator's default,
    unless parametrized ``indirect``). After the test, passed or failed: the network healed, every
    node running again (a paused node restarts by itself once it sees a majority), every node seeing
    every other (one that does not within ``REJOIN_SECONDS`` is restarted) and every quorum queue's
    members back in step, so that the next test starts from a whole cluster."""
    mode: str = getattr(request, "param", "pause_minority")
    await asyncio.to_thread(cluster.set_partition_handling, mode)
    yield mode
    network.heal()
    healed_at = time.monotonic()
    # A node accepts connections again once its application runs (a paused one does not listen);
    # then each must be safe to lose, i.e. every quorum queue's members on the others are in step.
    await asyncio.gather(*(back_again(cluster, letter) for letter in cluster.nodes))
    for letter in await asyncio.to_thread(cluster.split_off, timeout=REJOIN_SECONDS):
        took = await asyncio.to_thread(cluster.restart, letter)
        print(
            f"\nnode {letter} still split off {REJOIN_SECONDS:.0f}s after the heal: restarted ({took:.0f}s)"
        )
    # One node at a time: each check boots an Erlang VM (1-3 s of CPU), and three at once on a loaded
    # machine slow the very nodes they ask.
    for letter in cluster.nodes:
        await asyncio.to_thread(cluster.wait_quorum_safe, letter)
    print(f"\nevery node back and quorum-safe {time.monotonic() - healed_at:.1f}s after the heal")


#: A node paused by a partition starts again by itself within seconds of the heal; one still paused
#: after this long is restarted, as an operator would.
RESTART_AFTER_SECONDS = 30.0
#: A running node rejoins its peers within seconds of the heal (Erlang reconnects on the next tick);
#: one still split off after this long is restarted (``RabbitCluster.split_off``).
REJOIN_SECONDS = 30.0


async def back_again(cluster: RabbitCluster, letter: str) -> None:
    try:
        await asyncio.to_thread(cluster.wait_listening, letter, timeout=RESTART_AFTER_SECONDS)
    except ClusterError:
        took = await asyncio.to_thread(cluster.restart, letter)
        print(
            f"\nnode {letter} not back {RESTART_AFTER_SECONDS:.0f}s after the heal: restarted ({took:.0f}s)"
        )
