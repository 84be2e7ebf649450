"""A Redis Cluster on free loopback ports, for tests and the bench: three masters with two replicas each.

Each node is a ``redis-server`` of its own (``cluster-enabled yes``; config, ``nodes.conf``, data and log
in one temp dir, no persistence), joined by ``redis-cli --cluster create ... --cluster-replicas 2``.
``start()`` returns once every node says ``cluster_state:ok`` and every replica's link to its master is
up: a replica that never finished its first sync does not stand for election (``cluster-replica-validity-
factor``), so killing a master before then would leave its slots without a master. With
``cluster-node-timeout`` 1500 ms a killed master's replica takes over in about 3 s.

A cluster an earlier run left behind (its test process killed before ``stop()``) is removed by the next
``start()``: its processes are killed and its directory deleted, while clusters of runs still alive are
left alone (their owner's pid is in the directory)::

    with RedisClusterGroup() as cluster:
        env = cluster.service_env()                    # REDIS_CLUSTER_NODES=127.0.0.1:p1,...
        old = cluster.master_of(cluster.keyslot("{room}"))
        old.kill(); new, seconds = cluster.wait_failover(old)
        cluster.migrate_slot(slot, to=other_master)    # a live reshard of one slot

``python -m testkit.redis_cluster`` starts one and prints its seeds until interrupted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
from redis.cluster import ClusterNode
from redis.cluster import RedisCluster as SyncRedisCluster
from redis.crc import key_slot

from livekit_signaling.store.target import RedisTarget
from testkit.processes import free_port, process_alive
from testkit.redis_sentinel import (
    HOST,
    RedisNode,
    access_settings,
    acl_user,
    common_config,
    node_client,
    tls_config,
    wait_until,
)
from testkit.tls import TlsFiles

#: A node's cluster bus listens on its port + 10000 (Redis's fixed offset).
BUS_OFFSET = 10_000
#: Temp dirs of clusters are named so, and hold the pid of the process that started them.
DIRECTORY_PREFIX = "redis-cluster-"
OWNER_FILE = "owner.pid"


def _free_node_port() -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    return free_port(offsets=(0, BUS_OFFSET), host=HOST)


def _processes_under(directory: Path) -> list[int]:
    """Pids of the processes working in ``directory`` (a redis-server changes into its ``dir``, and
    renames itself, so its command line does not say where it belongs)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if Path(os.readlink(entry / "cwd")).is_relative_to(directory):
                pids.append(int(entry.name))
    return pids


def remove_stale_clusters() -> list[Path]:
    """Clusters whose owner process is gone: kill their redis-servers, delete their directories."""
    removed = []
    for directory in Path(tempfile.gettempdir()).glob(f"{DIRECTORY_PREFIX}*"):
        try:
            owner = int((directory / OWNER_FILE).read_text())
        except (OSError, ValueError):
            # Not written yet by a run that is starting, or not ours: only old ones are stale.
            if time.time() - directory.stat().st_mtime < 600:
                continue
            owner = 0
        if owner and process_alive(owner):
            continue
        for pid in _processes_under(directory):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(directory, ignore_errors=True)
        removed.append(directory)
    return removed


@dataclass(frozen=True)
class ClusterNodeView:
    """One line of ``CLUSTER NODES``, as a live node sees the cluster."""

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str | None
    slots: tuple[tuple[int, int], ...]

    @property
    def is_master(self) -> bool:
        return "master" in self.flags and "fail" not in self.flags

    def owns(self, slot: int) -> bool:
        return any(first <= slot <= last for first, last in self.slots)


def _parse_cluster_nodes(text: str) -> list[ClusterNodeView]:
    views = []
    for line in text.strip().splitlines():
        node_id, address, flags, master, _ping, _pong, _epoch, _link, *slots = line.split()
        port = int(address.split("@")[0].rsplit(":", 1)[1])
        ranges = []
        for item in slots:
            if item.startswith("["):  # a slot being migrated or imported: [slot->-id] / [slot-<-id]
                continue
            first, _, last = item.partition("-")
            ranges.append((int(first), int(last or first)))
        views.append(
            ClusterNodeView(
                node_id=node_id,
                port=port,
                flags=frozenset(flags.split(",")),
                master_id=None if master == "-" else master,
                slots=tuple(ranges),
            )
        )
    return views


class RedisClusterGroup:
    """``masters`` masters with ``replicas`` replicas each, on loopback; with ``password`` (and
    ``username``: an ACL user, ``default`` off) and ``tls`` (TLS only, also between the nodes)."""

    def __init__(
        self,
        *,
        masters: int = 3,
        replicas: int = 2,
        password: str | None = None,
        username: str | None = None,
        tls: TlsFiles | None = None,
        node_timeout_milliseconds: int = 1500,
    ) -> None:
        if username and not password:
            raise ValueError("an ACL user here needs its password")
        self.masters_count = masters
        self.replicas_per_master = replicas
        self.password = password
        self.username = username
        self.tls = tls
        self._node_timeout = node_timeout_milliseconds
        self.root = Path(tempfile.mkdtemp(prefix=DIRECTORY_PREFIX))
        (self.root / OWNER_FILE).write_text(str(os.getpid()))
        self.nodes = [self._node(f"node-{n}") for n in range(masters * (1 + replicas))]
        #: Seconds ``start()`` took, for the tests' figures.
        self.started_in = 0.0

    def _node(self, name: str) -> RedisNode:
        directory = self.root / name
        directory.mkdir()
        return RedisNode(name=name, port=_free_node_port(), directory=directory)

    # -- settings for the service --------------------------------------------------------------------

    @property
    def nodes_setting(self) -> str:
        """``REDIS_CLUSTER_NODES``: every node as a seed (the client needs only one that answers)."""
        return ",".join(node.address for node in self.nodes)

    def target(self, **settings: Any) -> RedisTarget:
        """The service's ``RedisTarget`` for this cluster, for a store made in the test's own process."""
        return RedisTarget(
            cluster_nodes=tuple((HOST, node.port) for node in self.nodes),
            username=self.username,
            password=self.password,
            tls=self.tls is not None,
            tls_ca=self.tls.ca.read_text() if self.tls is not None else None,
            **settings,
        )

    def service_env(self, **extra: str) -> dict[str, str]:
        env = {"REDIS_CLUSTER_NODES": self.nodes_setting}
        env |= access_settings(self.tls, REDIS_USERNAME=self.username, REDIS_PASSWORD=self.password)
        return {**env, **extra}

    # -- life cycle ----------------------------------------------------------------------------------

    def __enter__(self) -> RedisClusterGroup:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    def start(self, timeout: float = 60.0) -> RedisClusterGroup:
        started = time.monotonic()
        remove_stale_clusters()
        try:
            for node in self.nodes:
                self._write_config(node)
                node.start()
            for node in self.nodes:
                self._wait(partial(self.query, node, "PING"), f"{node.name} did not answer", timeout)
            self._create()
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - started
        return self

    def stop(self) -> None:
        """Stop every process, remove the temp dir."""
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def _write_config(self, node: RedisNode) -> None:
        lines = [
            *common_config(node, self.tls),
            *tls_config(node, self.tls),
            "cluster-enabled yes",
            f'cluster-config-file "{node.directory}/nodes.conf"',
            f"cluster-node-timeout {self._node_timeout}",
            # A replica that (re)joins syncs at once instead of waiting for more replicas to share it.
            "repl-diskless-sync-delay 0",
        ]
        if self.tls is not None:
            lines.append("tls-cluster yes")
        if self.username:
            lines += [*acl_user(self.username, self.password), f"masteruser {self.username}"]
            lines.append(f"masterauth {self.password}")
        elif self.password:
            lines += [f"requirepass {self.password}", f"masterauth {self.password}"]
        node.config.write_text("\n".join(lines) + "\n")

    def _cli_auth(self) -> list[str]:
        args = []
        if self.username:
            args += ["--user", self.username]
        if self.password:
            args += ["--pass", self.password, "--no-auth-warning"]
        if self.tls is not None:
            args += ["--tls", "--cacert", str(self.tls.ca)]
        return args

    def _create(self) -> None:
        result = subprocess.run(
            [
                "redis-cli",
                *self._cli_auth(),
                "--cluster",
                "create",
                *(node.address for node in self.nodes),
                "--cluster-replicas",
                str(self.replicas_per_master),
                "--cluster-yes",
            ],
            capture_output=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {result.stdout.decode()[-2000:]}")

    # -- clients -------------------------------------------------------------------------------------

    def client(self, node: RedisNode, *, timeout: float = 2.0) -> redis.Redis:
        """A client of one node (no redirections followed)."""
        return node_client(
            node, username=self.username, password=self.password, tls=self.tls, timeout=timeout
        )

    def cluster_client(self) -> SyncRedisCluster:
        """redis-py's cluster client, following redirections: for reading what the service wrote."""
        running = [node for node in self.nodes if node.running]
        return SyncRedisCluster(
            startup_nodes=[ClusterNode(HOST, node.port) for node in running],  # type: ignore[no-untyped-call]
            username=self.username,
            password=self.password,
            ssl=self.tls is not None,
            ssl_ca_certs=str(self.tls.ca) if self.tls is not None else None,
        )

    def query(self, node: RedisNode, *command: str | int | bytes) -> Any:
        """One command to one node, its reply."""
        with self.client(node) as client:
            return client.execute_command(*command)

    def keys_on(self, node: RedisNode, pattern: str) -> list[str]:
        """The keys matching ``pattern`` that ``node`` holds (``SCAN``)."""
        with self.client(node) as client:
            return [key.decode() for key in client.scan_iter(match=pattern, count=1000)]

    def command_calls(self, command: str) -> int:
        """How often the running masters served ``command`` (``INFO commandstats``), e.g. ``asking``:
        a client following an ``ASK`` redirection."""
        total = 0
        for master in self.masters():
            with self.client(master) as client:
                stats = client.info("commandstats")
            total += int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))
        return total

    # -- topology ------------------------------------------------------------------------------------

    @staticmethod
    def keyslot(key: str) -> int:
        """The hash slot of ``key``, computed here (redis-py's ``key_slot``)."""
        return key_slot(key.encode())

    def server_keyslot(self, key: str) -> int:
        """The hash slot of ``key`` as a node computes it (``CLUSTER KEYSLOT``)."""
        running = next(node for node in self.nodes if node.running and not node.paused)
        return int(self.query(running, "CLUSTER", "KEYSLOT", key))

    def node_at(self, port: int) -> RedisNode:
        return next(node for node in self.nodes if node.port == port)

    def view(self, via: RedisNode | None = None) -> list[ClusterNodeView]:
        """``CLUSTER NODES`` as ``via`` (default: the first node that runs and answers) sees it."""
        via = via or next(node for node in self.nodes if node.running and not node.paused)
        text = self.query(via, "CLUSTER", "NODES")
        return _parse_cluster_nodes(text.decode() if isinstance(text, bytes) else str(text))

    def _view_of(self, node: RedisNode, via: RedisNode | None = None) -> ClusterNodeView:
        return next(v for v in self.view(via) if v.port == node.port)

    def masters(self) -> list[RedisNode]:
        """The masters that own slots, as a running node sees them."""
        return [self.node_at(v.port) for v in self.view() if v.is_master and v.slots]

    def master_of(self, slot: int) -> RedisNode:
        """The master that owns ``slot``; raises ``KeyError`` while none does (a fail-over under way)."""
        for view in self.view():
            if view.is_master and view.owns(slot):
                return self.node_at(view.port)
        raise KeyError(f"no master owns slot {slot}")

    def replicas_of(self, master: RedisNode, *, expected: int = 0, timeout: float = 15.0) -> list[RedisNode]:
        """The replicas of ``master`` that no node has marked failed. With ``expected``, waits up to
        ``timeout`` until that many are seen: on a loaded machine a replica that missed the 1.5 s node
        timeout is marked failed for a moment and then taken back."""
        deadline = time.monotonic() + timeout
        while True:
            views = self.view()
            master_id = next(v.node_id for v in views if v.port == master.port)
            replicas = [
                self.node_at(v.port) for v in views if v.master_id == master_id and "fail" not in v.flags
            ]
            if len(replicas) >= expected or time.monotonic() > deadline:
                return replicas
            time.sleep(0.1)

    # -- faults --------------------------------------------------------------------------------------

    def wait_failover(self, old: RedisNode, timeout: float = 30.0) -> tuple[RedisNode, float]:
        """After ``old`` (a master) was killed: until another node owns its slots as a master, in its own
        view and says ``cluster_state:ok``; returns that node and the seconds waited. (Other nodes may
        be paused meanwhile.)"""
        slot = next(first for first, _ in self._view_of(old).slots)
        started = time.monotonic()
        found: list[RedisNode] = []

        def promoted() -> bool:
            new = self.master_of(slot)
            if new is old or self.role(new) != "master" or not self._ok(new):
                return False
            found.append(new)
            return True

        self._wait(promoted, f"no fail-over away from {old.address}", timeout)
        return found[-1], time.monotonic() - started

    def role(self, node: RedisNode) -> str | None:
        """``master`` or ``slave`` as the node itself says; None if it does not answer."""
        try:
            reply = self.query(node, "ROLE")
        except redis.RedisError:
            return None
        role = reply[0]
        return role.decode() if isinstance(role, bytes) else str(role)

    def back_up_replication(self, master: RedisNode, tag: str, megabytes: int = 24) -> None:
        """Write ``megabytes`` MB of filler to ``master``, in the slot of hash tag ``tag`` (one it
        serves). With its replicas paused, this fills the socket buffers between them, so that the
        replication stream of whatever the master writes next waits in the master's own memory, and dies
        with it (``RedisSentinelGroup.back_up_replication`` says more)."""
        filler = b"x" * (1024 * 1024)
        key = f"redis-cluster-group:filler:{{{tag}}}"
        with self.client(master, timeout=30) as client:
            for _ in range(megabytes):
                client.set(key, filler)
            client.delete(key)

    def restart(self, node: RedisNode, timeout: float = 60.0) -> None:
        """Start a stopped or killed node again with its ``nodes.conf``: it rejoins, empty, as a replica
        of whichever node took its place (a restarted pod with a persistent ``nodes.conf``); returns once
        it is synced."""
        assert not node.running
        node.start()
        self.wait_healthy(timeout)

    def migrate_slot(
        self,
        slot: int,
        to: RedisNode,
        *,
        pause_seconds: float = 0.0,
        on_migrating: Callable[[], None] | None = None,
    ) -> int:
        """A live reshard of one slot, as ``redis-cli --cluster reshard`` does it (``SlotMigration``):
        its keys move one at a time, ``pause_seconds`` after each, meanwhile the owner answers ``ASK``
        for keys already moved (and ``TRYAGAIN`` for a multi-key command whose keys are split);
        ``on_migrating`` runs once the slot is in that state. Returns the number of keys moved."""
        migration = self.begin_migration(slot, to)
        if migration is None:
            return 0
        if on_migrating is not None:
            on_migrating()
        moved = 0
        while migration.move_key():
            moved += 1
            time.sleep(pause_seconds)
        migration.finish()
        return moved

    def begin_migration(self, slot: int, to: RedisNode) -> SlotMigration | None:
        """``to`` imports ``slot`` and its owner migrates it (``CLUSTER SETSLOT``); None if ``to`` owns
        it already."""
        source = self.master_of(slot)
        if source is to:
            return None
        migration = SlotMigration(self, slot, source, to)
        self.query(to, "CLUSTER", "SETSLOT", slot, "IMPORTING", migration.source_id)
        self.query(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", migration.target_id)
        return migration

    def migrate_auth(self) -> list[str]:
        """``MIGRATE``'s arguments that authenticate it to the target node."""
        if self.username:
            assert self.password is not None
            return ["AUTH2", self.username, self.password]
        return ["AUTH", self.password] if self.password else []

    # -- waiting -------------------------------------------------------------------------------------

    def _wait(self, predicate: Callable[[], object], what: str, timeout: float) -> None:
        wait_until(predicate, what, timeout, logs=self.root)

    def _ok(self, node: RedisNode) -> bool:
        info = self.query(node, "CLUSTER", "INFO")
        return "cluster_state:ok" in (info.decode() if isinstance(info, bytes) else str(info))

    def _all_ok(self) -> bool:
        return all(self._ok(node) for node in self.nodes if node.running)

    def _replica_links_up(self) -> bool:
        for node in self.nodes:
            if node.running and self.role(node) == "slave":
                with self.client(node) as client:
                    info = client.info("replication")
                if info.get("master_link_status") != "up" or info.get("master_sync_in_progress"):
                    return False
        return True

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Until every running node says ``cluster_state:ok``, sees every running node in the role that
        node says it has (gossip spreads who replicates whom), and every replica's link to its master
        is up (synced: it can stand for election)."""
        running = [node for node in self.nodes if node.running]

        def healthy() -> bool:
            if not self._all_ok():
                return False
            roles = {node.port: "master" if self.role(node) == "master" else "slave" for node in running}
            for node in running:
                seen = {v.port: v.flags for v in self.view(node) if "fail" not in v.flags}
                if any(port not in seen or role not in seen[port] for port, role in roles.items()):
                    return False
            return self._replica_links_up()

        self._wait(healthy, "the cluster did not settle", timeout)


class SlotMigration:
    """One slot on its way from ``source`` to ``target``: ``move_key`` moves the next key (``MIGRATE``),
    ``finish`` tells every master the new owner (``CLUSTER SETSLOT ... NODE``)."""

    def __init__(self, cluster: RedisClusterGroup, slot: int, source: RedisNode, target: RedisNode) -> None:
        self.cluster = cluster
        self.slot = slot
        self.source = source
        self.target = target
        self.source_id = cluster._view_of(source).node_id
        self.target_id = cluster._view_of(target).node_id

    def move_key(self, key: str | None = None) -> bool:
        """Move ``key`` (default: the next key left in the slot); False when none was left."""
        keys = (
            [key]
            if key is not None
            else self.cluster.query(self.source, "CLUSTER", "GETKEYSINSLOT", self.slot, 1)
        )
        if not keys:
            return False
        self.cluster.query(
            self.source,
            "MIGRATE",
            HOST,
            self.target.port,
            "",
            0,
            5000,
            *self.cluster.migrate_auth(),
            "KEYS",
            *keys,
        )
        return True

    def finish(self) -> None:
        cluster = self.cluster
        others = [m for m in cluster.masters() if m not in (self.source, self.target)]
        for node in (self.target, self.source, *others):
            cluster.query(node, "CLUSTER", "SETSLOT", self.slot, "NODE", self.target_id)
        cluster._wait(lambda: cluster.master_of(self.slot) is self.target, f"slot {self.slot} not moved", 10)


def spread_over_masters(cluster: RedisClusterGroup, keys: Sequence[str]) -> dict[int, int]:
    """How many of ``keys`` each master (by port) holds the slot of."""
    owners: dict[int, int] = {}
    views = [v for v in cluster.view() if v.is_master]
    for key in keys:
        slot = cluster.keyslot(key)
        port = next(v.port for v in views if v.owns(slot))
        owners[port] = owners.get(port, 0) + 1
    return owners


def main() -> None:
    with RedisClusterGroup() as cluster:
        print(f"started in {cluster.started_in:.1f} s; masters {[m.address for m in cluster.masters()]}")
        print(f"REDIS_CLUSTER_NODES={cluster.nodes_setting}")
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":
    main()
