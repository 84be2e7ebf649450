"""A 3-node RabbitMQ cluster on loopback ports beside the system node (or on test hosts), for the HA and
partition tests and the bench.

Each node has its own name (``ha<id>-a@localhost`` …), AMQP and distribution ports picked free, and its
own data, log and config files in a temporary directory owned by the ``rabbitmq`` user (the Debian
scripts run the server as that user, also when started by root; the Erlang cookie is that user's). The
consistent-hash exchange plugin is enabled from the start. Nodes b and c join a with ``join_cluster``.
Single nodes can be stopped, killed (SIGKILL) and started again; ``close()`` stops everything and
removes the directory. Needs root (or the ``rabbitmq`` user), as the Debian scripts do.

    with RabbitCluster() as cluster:          # about a minute on the 2-core machines
        cluster.amqp_url                      # "amqp://guest:guest@127.0.0.1:p1/,amqp://…:p2/,…"
        cluster.kill("a"); cluster.start("a")

With ``hosts`` (``testkit.netns``) each node runs in a network namespace of its own, at its own
address: the node is then named by that address with Erlang long names (``ha<id>-a@10.213.0.2``,
``RABBITMQ_USE_LONGNAME``), listens and distributes on that address only, and every command for it
(the server, ``rabbitmqctl``) runs inside its namespace. Each namespace has its own loopback, so each
node has its own epmd there (the Erlang VM starts one on its first boot; ``TestNetwork.close`` ends
it): nodes find each other through the epmd at the peer's address, port 4369, which a cut between
two hosts cuts too, as between machines.

``python -m testkit.rabbit_cluster`` starts one, prints its URLs and keeps it until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from testkit.hosts import LOCALHOST, Host
from testkit.processes import free_port, process_alive
from testkit.tls import RABBITMQ_USER, TlsFiles

#: What the service's default topology needs (``SIGNALING_PARTITIONS`` > 1).
HASH_PLUGIN = "rabbitmq_consistent_hash_exchange"


class ClusterError(RuntimeError):
    pass


@dataclass(frozen=True)
class QueueReplicas:
    name: str
    leader: str
    members: tuple[str, ...]


@dataclass
class RabbitNode:
    letter: str
    name: str  # Erlang node name, ``ha<id>-a@localhost`` (``ha<id>-a@<address>`` on a test host)
    amqp_port: int
    dist_port: int
    directory: Path
    #: Enabled from the start (the ``enabled_plugins`` file).
    plugins: tuple[str, ...] = (HASH_PLUGIN,)
    #: With these, a TLS listener on ``tls_port`` too (the plain one stays, for the helpers' checks).
    tls: TlsFiles | None = None
    tls_port: int | None = None
    #: ``cluster_partition_handling``: RabbitMQ's default ``ignore``, or ``pause_minority`` (the Cluster
    #: Operator's default), as ``RabbitCluster.set_partition_handling`` last set it.
    partition_handling: str = "ignore"
    #: Where it runs: this machine's loopback, or a test host in a network namespace.
    host: Host = LOCALHOST
    #: Erlang's ``net_ticktime`` (seconds; None: 60, RabbitMQ's default). A peer that stops answering is
    #: declared down after 0.75-1.25 times this, which is when partition handling starts.
    net_ticktime: int | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{self.host.address}:{self.amqp_port}/"

    def tls_url(self, cafile: Path | str | None = None) -> str:
        """``amqps://`` to the TLS listener; ``cafile`` (default: the node's own CA) in the query, as
        aiormq reads it."""
        assert self.tls is not None, "a node without tls="
        assert self.tls_port is not None
        return f"amqps://guest:guest@{self.host.address}:{self.tls_port}/?cafile={cafile or self.tls.ca}"

    @property
    def address(self) -> str:
        """How the service names the node it is on (``/readyz``, logs)."""
        return f"{self.host.address}:{self.amqp_port}/"

    @property
    def pid_file(self) -> Path:
        return self.directory / "rabbit.pid"

    def environment(self) -> dict[str, str]:
        d = self.directory
        return {
            **os.environ,
            # Our own (empty) env file: the system one names the system node.
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq"),  # without ".conf", as the scripts want it
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
            # Distribution on the host's address only (loopback, like the system node).
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": (
                f"-kernel inet_dist_use_interface {self.host.erlang_address}"
            ),
            # Named by address on a test host: long names (the CLI tools need to know it too).
            "RABBITMQ_USE_LONGNAME": "false" if self.host.namespace is None else "true",
        }

    def write_files(self) -> None:
        d = self.directory
        for sub in ("mnesia", "log"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "rabbitmq-env.conf").write_text("")
        (d / "enabled_plugins").write_text(f"[{','.join(self.plugins)}].\n")
        self.write_config()
        kernel = f"{{kernel, [{{net_ticktime, {self.net_ticktime}}}]}}" if self.net_ticktime else ""
        (d / "advanced.config").write_text(f"[{kernel}].\n")

    def write_config(self) -> None:
        """``rabbitmq.conf``, read when the node boots."""
        (self.directory / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = {self.host.address}:{self.amqp_port}\n"
            "loopback_users = none\n"
            # The nodes share two cores with everything else: keep their own overhead down.
            "management_agent.disable_metrics_collector = true\n"
            "collect_statistics = none\n"
            f"cluster_partition_handling = {self.partition_handling}\n" + self._tls_config()
        )

    def _tls_config(self) -> str:
        if self.tls is None:
            return ""
        return (
            f"listeners.ssl.default = {self.host.address}:{self.tls_port}\n"
            f"ssl_options.cacertfile = {self.tls.ca}\n"
            f"ssl_options.certfile = {self.tls.cert}\n"
            f"ssl_options.keyfile = {self.tls.key}\n"
            # No client certificates here: the service authenticates with user and password.
            "ssl_options.verify = verify_none\n"
            "ssl_options.fail_if_no_peer_cert = false\n"
        )

    def pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int(self.pid_file.read_text().strip())
        return None


class RabbitCluster:
    """Three (``size``) clustered nodes; node letters ``a``, ``b``, ``c`` name them in every method.
    ``plugins``: enabled on every node from the start (``()`` = a stock broker). ``tls``: certificate
    files (testkit/tls.py) for a TLS listener on every node besides the plain one
    (``RabbitNode.tls_url``). ``hosts``: a test host per node letter (``testkit.netns``), else every
    node on loopback. ``net_ticktime``: Erlang's, on every node (None: RabbitMQ's 60 s)."""

    def __init__(
        self,
        size: int = 3,
        *,
        plugins: Sequence[str] = (HASH_PLUGIN,),
        startup_timeout: float = 120.0,
        tls: TlsFiles | None = None,
        hosts: Mapping[str, Host] | None = None,
        net_ticktime: int | None = None,
    ) -> None:
        self.id = uuid.uuid4().hex[:6]
        self.startup_timeout = startup_timeout
        self.directory = Path(tempfile.mkdtemp(prefix=f"rabbit-cluster-{self.id}-"))
        letters = "abcdefg"[:size]
        hosts = hosts or {}
        self.nodes = {
            letter: RabbitNode(
                letter=letter,
                name=f"ha{self.id}-{letter}@{_node_host(hosts.get(letter, LOCALHOST))}",
                amqp_port=free_port(),
                dist_port=free_port(),
                directory=self.directory / letter,
                plugins=tuple(plugins),
                tls=tls,
                tls_port=free_port() if tls is not None else None,
                host=hosts.get(letter, LOCALHOST),
                net_ticktime=net_ticktime,
            )
            for letter in letters
        }
        self.started_in: float | None = None

    # -- addresses ------------------------------------------------------------------------------------

    def urls(self, first: str | None = None) -> list[str]:
        """Every node's URL, starting with ``first`` (then the others in order)."""
        letters = list(self.nodes)
        if first is not None:
            index = letters.index(first)
            letters = letters[index:] + letters[:index]
        return [self.nodes[letter].url for letter in letters]

    def amqp_url(self, first: str | None = None) -> str:
        """The comma-separated ``AMQP_URL`` of the whole cluster."""
        return ",".join(self.urls(first))

    def node_at(self, address: str) -> str:
        """The letter of the node whose ``host:port/vhost`` (as ``/readyz`` shows it) is ``address``."""
        for letter, node in self.nodes.items():
            if node.address == address:
                return letter
        raise KeyError(address)

    # -- lifecycle ------------------------------------------------------------------------------------

    def start_cluster(self) -> RabbitCluster:
        started = time.monotonic()
        try:
            for node in self.nodes.values():
                node.write_files()
            _chown_tree(self.directory)
            for letter in self.nodes:
                self._launch(letter)
            for letter in self.nodes:
                self.wait_running(letter)
            first, *others = self.nodes

            # One at a time, as RabbitMQ's peer discovery does under its lock: two nodes joining at
            # once can abort each other's schema change (Mnesia's
            # `{aborted, {shutdown, ... schema_prepare}}` on the second joiner).
            for letter in others:
                self.ctl(letter, "stop_app")
                self.ctl(letter, "join_cluster", self.nodes[first].name)
                self.ctl(letter, "start_app")
                self.wait_running(letter)
        except BaseException:
            self.close()
            raise
        self.started_in = time.monotonic() - started
        return self

    def _launch(self, letter: str) -> None:
        node = self.nodes[letter]
        node.pid_file.unlink(missing_ok=True)
        result = subprocess.run(
            node.host.command(["rabbitmq-server", "-detached"]),
            env=node.environment(),
            capture_output=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise ClusterError(f"rabbitmq-server {node.name}: {result.stderr.decode()[-1000:]}")

    def start(self, letter: str) -> float:
        """Start a stopped or killed node again; the seconds until it runs (it rejoins by itself). A node
        whose VM is alive (paused as a minority under ``pause_minority``) is only waited for: it starts
        its own RabbitMQ application once it sees a majority of the cluster again."""
        started = time.monotonic()
        pid = self.nodes[letter].pid()
        if pid is None or not process_alive(pid):
            self._launch(letter)
        self.wait_running(letter)
        return time.monotonic() - started

    def stop(self, letter: str) -> float:
        """Stop a node as an operator does (``rabbitmqctl stop``: the whole Erlang VM)."""
        started = time.monotonic()
        self.ctl(letter, "stop", timeout=120)
        return time.monotonic() - started

    def kill(self, letter: str) -> None:
        """SIGKILL the node's Erlang VM: no clean shutdown, connections and Raft members just vanish."""
        pid = self.nodes[letter].pid()
        if pid is None:
            raise ClusterError(f"no pid for {self.nodes[letter].name}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)

    def restart(self, letter: str, *, stop_timeout: float = 30.0) -> float:
        """Restart a node that does not come back by itself: stopped as an operator does, killed if that
        does not finish within ``stop_timeout`` (``rabbitmqctl stop`` can hang on a paused node), then
        started; the seconds it took."""
        started = time.monotonic()
        try:
            self.ctl(letter, "stop", timeout=stop_timeout)
        except (ClusterError, subprocess.TimeoutExpired):
            self.kill(letter)
        self.start(letter)
        return time.monotonic() - started

    def start_stopped(self) -> None:
        """Start every node that does not run: after a test that stopped some, passed or failed."""
        for letter in self.nodes:
            if not self.is_running(letter):
                self.start(letter)

    def set_partition_handling(self, mode: str) -> None:
        """``cluster_partition_handling`` on every node: on the running ones at once (RabbitMQ reads the
        setting each time it sees a node go down, ``rabbit_node_monitor:handle_dead_node``) and in every
        node's ``rabbitmq.conf`` for its next boot, as a configured cluster has it."""
        if mode not in ("ignore", "pause_minority", "autoheal"):
            raise ValueError(f"unknown cluster_partition_handling {mode!r}")
        running = set(self.running_guess())
        for letter, node in self.nodes.items():
            node.partition_handling = mode
            node.write_config()
            if letter in running:
                self.ctl(letter, "eval", f"application:set_env(rabbit, cluster_partition_handling, {mode}).")

    def enable_plugin(self, letter: str, plugin: str) -> None:
        """``rabbitmq-plugins enable`` on a running node, as an operator fixes a stock broker."""
        self._plugins(letter, "enable", plugin)

    def disable_plugin(self, letter: str, plugin: str) -> None:
        """``rabbitmq-plugins disable`` on a running node."""
        self._plugins(letter, "disable", plugin)

    def _plugins(self, letter: str, verb: str, plugin: str) -> None:
        result = self._cli("rabbitmq-plugins", letter, verb, plugin, timeout=120)
        if result.returncode != 0:
            failure = result.stderr.decode()[-800:]
            raise ClusterError(f"rabbitmq-plugins {verb} {plugin} on {letter}: {failure}")

    def listening(self, letter: str) -> bool:
        """Whether the node accepts AMQP connections now (a paused or stopped node does not)."""
        try:
            node = self.nodes[letter]
            socket.create_connection((node.host.address, node.amqp_port), timeout=1).close()
        except OSError:
            return False
        return True

    def wait_listening(self, letter: str, *, timeout: float | None = None) -> None:
        """Until the node accepts AMQP connections (cheaper than ``wait_running``: no CLI call)."""
        timeout = self.startup_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while not self.listening(letter):
            if time.monotonic() > deadline:
                raise ClusterError(f"{self.nodes[letter].name} not listening after {timeout}s")
            time.sleep(0.2)

    def is_running(self, letter: str) -> bool:
        return self._cli("rabbitmq-diagnostics", letter, "-q", "check_running", timeout=30).returncode == 0

    def wait_running(self, letter: str) -> None:
        """Until the node accepts AMQP connections and ``check_running`` agrees. The port is polled
        first: every CLI call starts an Erlang VM (1-3 s of CPU here), which slows the booting node."""
        node = self.nodes[letter]
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.listening(letter) and self.is_running(letter):
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"{node.name} not running after {self.startup_timeout}s")
            time.sleep(0.2)

    def running_seen_by(self, letter: str) -> set[str]:
        """The letters of the nodes ``letter`` sees running (``cluster_status``); empty when it does not
        answer. A node that still records a partition counts only itself and the nodes it reaches."""
        result = self._cli("rabbitmqctl", letter, "-q", "cluster_status", "--formatter", "json", timeout=30)
        if result.returncode != 0:
            return set()
        try:
            status = json.loads(result.stdout)
        except ValueError:
            return set()
        by_name = {node.name: node.letter for node in self.nodes.values()}
        return {by_name[name] for name in status.get("running_nodes", []) if name in by_name}

    def split_off(self, *, timeout: float) -> list[str]:
        """Wait until every node sees every node running; the nodes still split off after ``timeout``,
        else none: those outside the group most nodes see (the larger one on a tie), which is the
        minority whether the split-off node sees only itself or its peers still see it.

        Under ``pause_minority`` a paused node starts again by itself once it sees a majority, and then
        rejoins. RabbitMQ 3.10 does not always: a node that resumes in a short whole window between two
        partitions (the nemesis cuts it off again within a second) can come up on its own after the
        final heal, running and accepting connections while its peers record it as partitioned, for good
        (docs/high-availability/partitions.md). RabbitMQ's answer is an operator's restart of the side
        not trusted ("Recovering From a Split-Brain")."""
        deadline = time.monotonic() + timeout
        while True:
            views = {letter: self.running_seen_by(letter) for letter in self.nodes}
            if all(view == set(self.nodes) for view in views.values()):
                return []
            if time.monotonic() > deadline:
                return outside_the_common_view(views)
            time.sleep(1.0)

    def wait_quorum_safe(self, letter: str, *, timeout: float = 180.0) -> None:
        """Until stopping ``letter`` would leave every quorum queue a majority: the check an operator
        runs before taking a node down (``rabbitmq-queues check_if_node_is_quorum_critical``)."""
        deadline = time.monotonic() + timeout
        while True:
            result = self._cli("rabbitmq-queues", letter, "check_if_node_is_quorum_critical", timeout=30)
            if result.returncode == 0:
                return
            if time.monotonic() > deadline:
                said = (result.stdout + result.stderr).decode(errors="replace")
                raise ClusterError(f"{letter} still quorum-critical after {timeout:.0f}s: {said[-1500:]}")
            time.sleep(0.5)

    def close(self) -> None:
        """Stop every node (killing what does not stop) and remove the directory."""
        for letter, node in self.nodes.items():
            pid = node.pid()
            if pid is not None and process_alive(pid):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.ctl(letter, "stop", timeout=30, check=False)
                if process_alive(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> RabbitCluster:
        return self.start_cluster()

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- inspection -----------------------------------------------------------------------------------

    def ctl(self, letter: str, *args: str, timeout: float = 60.0, check: bool = True) -> str:
        result = self._cli("rabbitmqctl", letter, *args, timeout=timeout)
        if check and result.returncode != 0:
            raise ClusterError(f"rabbitmqctl {' '.join(args)} on {letter}: {result.stderr.decode()[-800:]}")
        return result.stdout.decode()

    def queues(self, prefix: str, *, via: str | None = None) -> list[QueueReplicas]:
        """Quorum queues whose names start with ``prefix``: leader and members (node letters)."""
        letter = via or next(iter(self.running_guess()))
        raw = self.ctl(letter, "list_queues", "name", "leader", "members", "--formatter", "json", "-q")
        by_name = {node.name: node.letter for node in self.nodes.values()}
        found = []
        for row in json.loads(raw or "[]"):
            if str(row["name"]).startswith(prefix) and row.get("leader"):
                found.append(
                    QueueReplicas(
                        name=row["name"],
                        leader=by_name.get(row["leader"], row["leader"]),
                        members=tuple(by_name.get(m, m) for m in row.get("members") or ()),
                    )
                )
        return found

    def leaders(self, names: Sequence[str], *, via: str | None = None) -> Counter[str]:
        """How many of the queues ``names`` each node leads."""
        wanted = set(names)
        return Counter(q.leader for q in self.queues("", via=via) if q.name in wanted)

    def running_guess(self) -> Iterator[str]:
        """Nodes whose VM is alive (a cheap check: the pid), for picking one to ask."""
        for letter, node in self.nodes.items():
            pid = node.pid()
            if pid is not None and process_alive(pid):
                yield letter

    def _cli(self, tool: str, letter: str, *args: str, timeout: float) -> subprocess.CompletedProcess[bytes]:
        node = self.nodes[letter]
        return subprocess.run(
            node.host.command([tool, "-n", node.name, *args]),
            env=node.environment(),
            capture_output=True,
            timeout=timeout,
            check=False,
        )


def outside_the_common_view(views: Mapping[str, set[str]]) -> list[str]:
    """The nodes outside the group of running nodes that most nodes see (on a tie the larger group, then
    the one named last, so that the choice is the same every time)."""
    seen = Counter(frozenset(view) for view in views.values())
    group = max(seen, key=lambda view: (seen[view], len(view), sorted(view)))
    return [letter for letter in views if letter not in group]


def _node_host(host: Host) -> str:
    """The host part of a node's name: ``localhost`` on loopback, else the address (long names)."""
    return "localhost" if host.namespace is None else host.address


def _chown_tree(root: Path) -> None:
    """Give the tree to the ``rabbitmq`` user: the server runs as that user, also when root starts it."""
    if os.geteuid() != 0:
        return
    user = pwd.getpwnam(RABBITMQ_USER)
    for path in [root, *root.rglob("*")]:
        os.chown(path, user.pw_uid, user.pw_gid)


def main() -> None:
    cluster = RabbitCluster()
    with cluster:
        sys.stdout.write(f"started in {cluster.started_in:.1f}s\nAMQP_URL={cluster.amqp_url()}\n")
        for node in cluster.nodes.values():
            sys.stdout.write(f"{node.letter}: {node.name} amqp {node.amqp_port} data {node.directory}\n")
        sys.stdout.flush()
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":
    main()
