"""Test hosts in network namespaces on one bridge, and the network faults between them: partitions,
one host isolated, one-way cuts, silent drops, and the heal. Needs root (CI runs as root), iproute2
and, for silent drops, nftables (``.ci/run`` installs it).

Layout. The bridge ``lksig<id>`` in the root namespace holds the network's first address, the
*gateway*: the test runner, the LiveKit emulator and the load clients reach every host through it.
Each host is a namespace ``lksig-<pid>-<id>-<host>`` with its own loopback and a veth ``eth0`` on the
bridge at the next address. The addresses are one /24 of ``10.213.0.0/16``, a private range this
module checks is used by nothing else on the machine; each live network takes the first /24 no other
holds, so that runs in several worktrees do not meet.

    with TestNetwork(["a", "b", "c", "service"]) as network:
        network.hosts["a"].address                 # "10.213.0.2"
        network.hosts["a"].command(["redis-server", ...])   # run inside a's namespace
        network.partition(["a"], ["b", "c", "service"])     # Jepsen's complete grudge
        network.isolate("a", from_=["b", "c"])              # the same here
        network.cut("service", "a", both_ways=False, silent=True)   # one way, packets vanish
        network.heal()

A cut from ``source`` to ``target`` drops what ``source`` sends to ``target``, inside ``source``'s
namespace, so that nothing of the root namespace (the machine's own network) is ever changed:

- by default a blackhole route, ``ip -n <source> route add blackhole <target>/32``: a connect fails
  at once (``EINVAL``) and the packets of open connections are dropped, so TCP retransmits into nothing;
- ``silent=True``: an nftables rule in ``source``'s namespace (``output ip daddr <target> drop``):
  connects time out, as behind a dead switch port.

A cut both ways is the two one-way cuts. ``heal()`` removes every cut.

Clean-up. ``close()`` kills every process still inside the network's namespaces (``ip netns pids``:
epmd, which an Erlang node starts in its namespace, and whatever a failed test left), deletes the
veths, the namespaces and the bridge, and ``leftovers()`` then reports anything of them still on the
machine, processes holding one of the namespaces included (a fixture asserts it is empty). The
root-side links carry the owner's pid in their alias (``lksig-<pid>``), as the namespaces do in their
name: a network whose owner is gone (a run that was killed) is removed when the next one starts.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from testkit.hosts import Host
from testkit.processes import process_alive

#: The private range the test networks take their /24s from.
ADDRESS_RANGE = ipaddress.ip_network("10.213.0.0/16")
#: What names every namespace and link of a test network: ``lksig-<pid>-…`` and ``lksig<id>…``.
PREFIX = "lksig"
_NAMESPACE = re.compile(rf"^{PREFIX}-(?P<pid>\d+)-(?P<id>[0-9a-f]+)-")
_ALIAS = re.compile(rf"^{PREFIX}-(?P<pid>\d+)$")
#: Serialises choosing a /24 and creating the bridge that holds it, between concurrent runs.
_LOCK = Path("/run/lock") / f"{PREFIX}.lock"
#: nftables table each namespace's silent drops live in.
_NFT_TABLE = ("inet", PREFIX)


class NetworkError(RuntimeError):
    pass


@dataclass(frozen=True)
class Cut:
    """Packets from ``source`` to ``target`` are dropped (in ``source``'s namespace)."""

    source: str
    target: str
    silent: bool = False


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if check and result.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def _ip_json(*args: str) -> list[dict[str, object]]:
    output = _ip("-j", *args).stdout.strip()
    parsed: list[dict[str, object]] = json.loads(output) if output else []
    return parsed


def _namespaces() -> list[str]:
    return [str(entry["name"]) for entry in _ip_json("netns", "list")]


def _namespace_pids(namespace: str) -> list[int]:
    return [int(pid) for pid in _ip("netns", "pids", namespace, check=False).stdout.split()]


def _kill_namespace_processes(namespace: str, *, timeout: float = 10.0) -> None:
    """SIGKILL every process in ``namespace``, and wait until they are gone."""
    deadline = time.monotonic() + timeout
    while pids := _namespace_pids(namespace):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise NetworkError(f"processes {pids} in {namespace} survive SIGKILL")
        time.sleep(0.05)


def _owned_links() -> list[tuple[str, int, str]]:
    """Root-side links of test networks: (name, owner pid, kind), veths before bridges."""
    links = []
    for link in _ip_json("-d", "link", "show"):
        match = _ALIAS.match(str(link.get("ifalias") or ""))
        if match:
            info = link.get("linkinfo")
            kind = str(info.get("info_kind", "")) if isinstance(info, dict) else ""
            links.append((str(link["ifname"]), int(match["pid"]), kind))
    return sorted(links, key=lambda link: link[2] == "bridge")


def remove_stale() -> list[str]:
    """Remove the namespaces and links of test networks whose owner process is gone (a run that was
    killed before its clean-up): their processes killed first. Returns what was removed."""
    removed = []
    for namespace in _namespaces():
        match = _NAMESPACE.match(namespace)
        if match and not process_alive(int(match["pid"])):
            _kill_namespace_processes(namespace)
            _ip("netns", "del", namespace, check=False)
            removed.append(namespace)
    for name, pid, _ in _owned_links():
        if not process_alive(pid):
            _ip("link", "del", name, check=False)
            removed.append(name)
    return removed


@contextlib.contextmanager
def _allocation_lock() -> Iterator[None]:
    _LOCK.parent.mkdir(parents=True, exist_ok=True)
    with _LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _free_subnet() -> ipaddress.IPv4Network:
    """The first /24 of ``ADDRESS_RANGE`` that no address or route of the root namespace touches;
    refuses when something other than a test network's bridge uses the range."""
    ours = {name for name, _, _ in _owned_links()}
    taken: set[ipaddress.IPv4Network] = set()
    for entry in _ip_json("-4", "addr", "show"):
        for info in entry.get("addr_info") or []:  # type: ignore[attr-defined]
            address = ipaddress.ip_address(info["local"])
            if address in ADDRESS_RANGE:
                if entry["ifname"] not in ours:
                    raise NetworkError(f"{ADDRESS_RANGE} is in use on this machine ({entry['ifname']})")
                taken.add(ipaddress.ip_network(f"{address}/24", strict=False))  # type: ignore[arg-type]
    for route in _ip_json("-4", "route", "show", "table", "all"):
        destination = str(route.get("dst", ""))
        with contextlib.suppress(ValueError):
            network = ipaddress.ip_network(destination, strict=False)
            if network.overlaps(ADDRESS_RANGE) and route.get("dev") not in ours:
                raise NetworkError(f"{ADDRESS_RANGE} is routed on this machine ({destination})")
    for subnet in ADDRESS_RANGE.subnets(new_prefix=24):
        if subnet not in taken:
            return subnet  # type: ignore[return-value]
    raise NetworkError(f"every /24 of {ADDRESS_RANGE} is taken by a live test network")


class TestNetwork:
    """Hosts named ``hosts``, each in a namespace of its own, on one bridge with the root namespace."""

    __test__ = False  # not a pytest test class

    def __init__(self, hosts: Sequence[str]) -> None:
        if len(set(hosts)) != len(hosts) or not hosts:
            raise ValueError(f"host names must be distinct and at least one: {hosts}")
        self.id = uuid.uuid4().hex[:4]
        self.owner = os.getpid()
        self.bridge = f"{PREFIX}{self.id}"
        self._names = list(hosts)
        self.hosts: dict[str, Host] = {}
        self.gateway = ""
        self.cuts: set[Cut] = set()
        self._veths: list[str] = []
        #: Inode of each namespace, to find processes that still hold one after it was deleted.
        self._inodes: set[int] = set()

    # -- life cycle -----------------------------------------------------------------------------------

    def start(self) -> TestNetwork:
        remove_stale()
        try:
            with _allocation_lock():
                subnet = _free_subnet()
                addresses = subnet.hosts()
                self.gateway = str(next(addresses))
                alias = f"{PREFIX}-{self.owner}"
                _ip("link", "add", self.bridge, "type", "bridge")
                _ip("link", "set", self.bridge, "alias", alias)
                _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
                _ip("link", "set", self.bridge, "up")
            for index, name in enumerate(self._names):
                self.hosts[name] = self._add_host(name, str(next(addresses)), index, alias)
        except BaseException:
            self.close()
            raise
        return self

    def _add_host(self, name: str, address: str, index: int, alias: str) -> Host:
        namespace = f"{PREFIX}-{self.owner}-{self.id}-{name}"
        veth = f"{self.bridge}v{index}"
        _ip("netns", "add", namespace)
        self._inodes.add(os.stat(f"/run/netns/{namespace}").st_ino)
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        self._veths.append(veth)
        _ip("link", "set", veth, "alias", alias)
        _ip("link", "set", veth, "master", self.bridge, "up")
        _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", namespace, "link", "set", "eth0", "up")
        _ip("-n", namespace, "link", "set", "lo", "up")
        return Host(name, address, namespace)

    def close(self) -> None:
        """Heal, kill every process in the namespaces, delete veths, namespaces and the bridge."""
        mine = [ns for ns in _namespaces() if ns.startswith(f"{PREFIX}-{self.owner}-{self.id}-")]
        for namespace in mine:
            _kill_namespace_processes(namespace)
        for veth in self._veths:
            _ip("link", "del", veth, check=False)
        for namespace in mine:
            _ip("netns", "del", namespace, check=False)
        _ip("link", "del", self.bridge, check=False)
        self.cuts.clear()

    def leftovers(self) -> list[str]:
        """What of this network is still on the machine: namespaces, links, processes in one of its
        namespaces (also one already deleted). Empty after ``close()``."""
        found = [ns for ns in _namespaces() if ns.startswith(f"{PREFIX}-{self.owner}-{self.id}-")]
        links = {str(link["ifname"]) for link in _ip_json("link", "show")}
        found += sorted(links & {self.bridge, *self._veths})
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if os.stat(entry / "ns" / "net").st_ino in self._inodes:
                        found.append(f"process {entry.name} ({(entry / 'comm').read_text().strip()})")
        return found

    def __enter__(self) -> TestNetwork:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    # -- faults ---------------------------------------------------------------------------------------

    def cut(self, source: str, target: str, *, both_ways: bool = True, silent: bool = False) -> None:
        """Drop what ``source`` sends to ``target`` (and, ``both_ways``, what ``target`` sends back)."""
        self._add(Cut(source, target, silent))
        if both_ways:
            self._add(Cut(target, source, silent))

    def restore(self, source: str, target: str, *, both_ways: bool = True) -> None:
        """Undo ``cut`` between the two (of either kind)."""
        pairs = {(source, target), (target, source)} if both_ways else {(source, target)}
        for cut in [c for c in self.cuts if (c.source, c.target) in pairs]:
            self._remove(cut)

    def isolate(self, host: str, *, from_: Iterable[str] | None = None, silent: bool = False) -> None:
        """Cut ``host`` both ways from ``from_`` (default: every other host; the gateway stays)."""
        for other in self._others(host) if from_ is None else from_:
            self.cut(host, other, silent=silent)

    def partition(self, *groups: Iterable[str], silent: bool = False) -> None:
        """No host of a group reaches a host of another group, both ways (Jepsen's ``complete-grudge``);
        hosts named in no group, and the gateway, still reach everyone."""
        components = [set(group) for group in groups]
        for one, other in itertools.combinations(components, 2):
            for source, target in itertools.product(one, other):
                self.cut(source, target, silent=silent)

    def majorities_ring(self, hosts: Sequence[str], *, silent: bool = False) -> dict[str, set[str]]:
        """Jepsen's ``majorities-ring`` over ``hosts`` in the order given (shuffle them first, as
        Jepsen does): each host takes the majority of the ring that starts with it, and drops what
        the others send it (one way, as Jepsen's grudge: a node drops packets *from* those nodes).
        Every host receives from a majority, and no two from the same one. Returns the grudge: per
        host, whom it drops. On three hosts every link loses one direction, so no TCP connection
        between them survives."""
        majority = len(hosts) // 2 + 1
        ring = list(hosts) * 2
        grudge = {host: set(hosts) - set(ring[index : index + majority]) for index, host in enumerate(hosts)}
        for host, ignored in grudge.items():
            for other in ignored:
                self.cut(other, host, both_ways=False, silent=silent)
        return grudge

    def heal(self) -> None:
        """Every cut removed."""
        for cut in list(self.cuts):
            self._remove(cut)

    def _others(self, host: str) -> list[str]:
        return [name for name in self.hosts if name != host]

    def _add(self, cut: Cut) -> None:
        if cut in self.cuts:
            return
        source, target = self.hosts[cut.source], self.hosts[cut.target]
        assert source.namespace is not None
        if cut.silent:
            self._nft(source, f"add rule inet {PREFIX} output ip daddr {target.address} drop", create=True)
        else:
            _ip("-n", source.namespace, "route", "add", "blackhole", f"{target.address}/32")
        self.cuts.add(cut)

    def _remove(self, cut: Cut) -> None:
        source, target = self.hosts[cut.source], self.hosts[cut.target]
        assert source.namespace is not None
        self.cuts.discard(cut)
        if not cut.silent:
            _ip("-n", source.namespace, "route", "del", "blackhole", f"{target.address}/32", check=False)
            return
        # nftables deletes rules by handle: rebuild the namespace's table from the silent cuts left.
        rules = [
            f"add rule inet {PREFIX} output ip daddr {self.hosts[c.target].address} drop"
            for c in self.cuts
            if c.silent and c.source == cut.source
        ]
        self._nft(source, f"delete table inet {PREFIX}")
        for rule in rules:
            self._nft(source, rule, create=True)

    @staticmethod
    def _nft(host: Host, command: str, *, create: bool = False) -> None:
        family, table = _NFT_TABLE
        script = command
        if create:
            script = (
                f"add table {family} {table}\n"
                f"add chain {family} {table} output {{ type filter hook output priority 0; }}\n{command}"
            )
        if shutil.which("nft") is None:
            raise NetworkError("silent drops need nftables: apt-get install nftables")
        result = subprocess.run(
            host.command(["nft", "-f", "-"]),
            input=script + "\n",
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            raise NetworkError(f"nft in {host.name}: {result.stderr.strip()}")

    # -- probes ---------------------------------------------------------------------------------------

    def connects(self, source: str, target: str, port: int, *, timeout: float = 0.5) -> str:
        """Try a TCP connection from ``source`` (a host, or ``"gateway"``) to ``target``'s ``port``:
        ``"ok"``, ``"refused"`` (reached, nobody listening), ``"unreachable"`` (failed at once: a
        blackhole) or ``"timeout"`` (packets vanish). ``ping`` is not installed here."""
        address = self.gateway if target == "gateway" else self.hosts[target].address
        code = (
            "import socket, sys\n"
            f"try: socket.create_connection(({address!r}, {port}), timeout={timeout}).close()\n"
            "except ConnectionRefusedError: print('refused')\n"
            "except TimeoutError: print('timeout')\n"
            "except OSError: print('unreachable')\n"
            "else: print('ok')\n"
        )
        result = subprocess.run(
            self._python(source, code), capture_output=True, text=True, timeout=timeout + 30, check=False
        )
        return result.stdout.strip() or result.stderr.strip()

    def delivers(self, source: str, target: str, *, port: int = 9, timeout: float = 0.5) -> bool:
        """Whether a UDP datagram from ``source`` reaches ``target`` (one direction only, unlike a TCP
        connection, which needs both). The receiver looks only once the sender has sent, so that a slow
        start of either process (a loaded machine) cannot pass for a lost datagram."""
        listen = (
            "import socket, sys\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"s.bind(('0.0.0.0', {port})); print('ready', flush=True)\n"
            f"sys.stdin.readline(); s.settimeout({timeout})\n"
            "try: s.recv(64); print('got')\n"
            "except TimeoutError: print('nothing')\n"
        )
        address = self.hosts[target].address
        send = (
            "import socket\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"try: s.sendto(b'probe', ({address!r}, {port}))\n"
            "except OSError: pass\n"
        )
        receiving = subprocess.Popen(
            self._python(target, listen), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        with receiving as receiver:
            assert receiver.stdin is not None
            assert receiver.stdout is not None
            receiver.stdout.readline()
            subprocess.run(self._python(source, send), timeout=30, check=False)
            receiver.stdin.write("sent\n")
            receiver.stdin.flush()
            return receiver.stdout.readline().strip() == "got"

    def _python(self, where: str, code: str) -> list[str]:
        args = [sys.executable, "-c", code]
        return args if where == "gateway" else self.hosts[where].command(args)
