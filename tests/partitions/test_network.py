"""The test network itself (``testkit.netns``), on hosts of its own: what each kind of cut does to a TCP
connect and to a datagram, that the heal undoes it, Jepsen's majorities ring, and that nothing is left
on the machine after a close, nor after a run that was killed (found by its name, removed by the next)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.netns import PREFIX, TestNetwork, remove_stale
from testkit.processes import wait_for

pytestmark = pytest.mark.partitions

PORT = 7000
#: A TCP listener that accepts for ever, run inside a host.
LISTENER = (
    "import socket\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    f"s.bind(('0.0.0.0', {PORT})); s.listen(64)\n"
    "while True: s.accept()[0].close()\n"
)


@pytest.fixture
def hosts() -> Iterator[TestNetwork]:
    """Three hosts, each listening on ``PORT``; afterwards nothing of them may be left."""
    network = TestNetwork(["x", "y", "z"]).start()
    listeners: list[subprocess.Popen[bytes]] = []
    try:
        for host in network.hosts.values():
            listeners.append(subprocess.Popen(host.command([sys.executable, "-c", LISTENER])))
        time.sleep(0.5)
        yield network
    finally:
        network.close()
    assert all(listener.wait(5) is not None for listener in listeners), "close() left a listener running"
    assert not network.leftovers(), network.leftovers()


def reach(network: TestNetwork) -> dict[str, str]:
    """``connects`` between every ordered pair of hosts, and from the gateway, as ``"x>y": result``."""
    pairs = [(s, t) for s in ["gateway", *network.hosts] for t in network.hosts if s != t]
    return {f"{s}>{t}": network.connects(s, t, PORT) for s, t in pairs}


def test_a_whole_network_connects_everyone(hosts: TestNetwork) -> None:
    assert set(reach(hosts).values()) == {"ok"}
    addresses = [host.address for host in hosts.hosts.values()]
    assert len(set(addresses)) == 3
    assert all(address.startswith("10.213.") for address in [hosts.gateway, *addresses])


def test_isolate_cuts_both_ways_at_once_and_heal_restores(hosts: TestNetwork) -> None:
    hosts.isolate("x", from_=["y", "z"])
    seen = reach(hosts)
    assert seen["x>y"] == seen["y>x"] == seen["x>z"] == seen["z>x"] == "unreachable", seen
    assert seen["y>z"] == seen["z>y"] == seen["gateway>x"] == "ok", seen
    hosts.heal()
    assert set(reach(hosts).values()) == {"ok"}
    assert not hosts.cuts


def test_a_one_way_cut_drops_one_direction_only(hosts: TestNetwork) -> None:
    hosts.cut("x", "y", both_ways=False)
    assert not hosts.delivers("x", "y")
    assert hosts.delivers("y", "x")
    # TCP needs both directions: y's connect reaches x, whose answer vanishes.
    assert hosts.connects("x", "y", PORT) == "unreachable"
    assert hosts.connects("y", "x", PORT) == "timeout"


def test_silent_drops_time_out_instead_of_failing(hosts: TestNetwork) -> None:
    hosts.cut("x", "y", silent=True)
    hosts.cut("x", "z", both_ways=False, silent=True)
    assert hosts.connects("x", "y", PORT) == hosts.connects("y", "x", PORT) == "timeout"
    assert not hosts.delivers("x", "z")
    assert hosts.delivers("z", "x")
    hosts.restore("x", "y")
    assert hosts.connects("x", "y", PORT) == "ok"
    assert not hosts.delivers("x", "z"), "restoring one cut removed another"
    hosts.heal()
    assert set(reach(hosts).values()) == {"ok"}


def test_partition_cuts_between_groups_only(hosts: TestNetwork) -> None:
    hosts.partition(["x"], ["y"])
    seen = reach(hosts)
    assert seen["x>y"] == seen["y>x"] == "unreachable", seen
    assert {seen["x>z"], seen["z>x"], seen["y>z"], seen["z>y"]} == {"ok"}, "z was in no group"


def test_majorities_ring_on_three_hosts_drops_one_direction_of_every_link(hosts: TestNetwork) -> None:
    grudge = hosts.majorities_ring(["x", "y", "z"])
    assert grudge == {"x": {"z"}, "y": {"x"}, "z": {"y"}}
    for host, ignored in grudge.items():
        for other in set(hosts.hosts) - {host}:
            assert hosts.delivers(other, host) == (other not in ignored), (other, host)


def test_a_killed_run_is_removed_by_the_next() -> None:
    """A run killed with SIGKILL leaves its namespace, links and processes; ``remove_stale`` (which
    every ``TestNetwork.start`` calls) finds them by their name and the dead owner, and removes them."""
    code = (
        "import subprocess, sys, time\n"
        "from testkit.netns import TestNetwork\n"
        "network = TestNetwork(['stale']).start()\n"
        "subprocess.Popen(network.hosts['stale'].command(['sleep', '600']))\n"
        "print(network.hosts['stale'].namespace, network.bridge, flush=True)\n"
        "time.sleep(600)\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None
    namespace, bridge = owner.stdout.readline().split()
    assert namespace.startswith(f"{PREFIX}-{owner.pid}-")
    time.sleep(0.3)
    sleeper = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True, check=True)
    assert sleeper.stdout.split(), "the process inside the namespace did not start"
    owner.send_signal(signal.SIGKILL)
    owner.wait()

    removed = remove_stale()

    assert namespace in removed
    assert bridge in removed
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert namespace not in left
    links = subprocess.run(["ip", "link", "show"], capture_output=True, text=True, check=True).stdout
    assert bridge not in links
    gone = wait_for(
        lambda: not any(Path(f"/proc/{pid}").exists() for pid in sleeper.stdout.split()), timeout=5
    )
    assert gone is not None, f"processes of the stale namespace survive: {sleeper.stdout.split()}"
