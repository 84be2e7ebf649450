"""A Redis master, its replica(s) and three Sentinels on free loopback ports (or on test hosts), for
tests and the bench.

Each process is a ``redis-server`` of its own (config file, data directory and log in one temp dir), so
a test can ``kill -9`` the master, stop and restart a replica, and wait for Sentinel's fail-over. Sentinel
settings for a fail-over within seconds (docs/high-availability/redis.md's figures use them): quorum 2,
``down-after-milliseconds 1000``, ``failover-timeout 5000``. ``stop()`` ends every process it started
and removes the temp dir::

    with RedisSentinelGroup() as group:
        env = {"REDIS_SENTINELS": group.sentinels_setting, "REDIS_SENTINEL_MASTER": group.master_name}
        old = group.kill_master()
        new = group.wait_failover(old)

With ``hosts`` (``testkit.netns``) each process runs in a network namespace of its own and listens on
its host's address; replicas, Sentinels and clients reach it there, so a test can cut one off.

``python -m testkit.redis_sentinel`` starts one and prints its addresses until interrupted.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import redis

from livekit_signaling.store.target import RedisTarget
from testkit.hosts import LOCALHOST, Host
from testkit.processes import free_port, stop_process
from testkit.tls import TlsFiles

HOST = "127.0.0.1"


@dataclass
class RedisNode:
    """One ``redis-server`` process: a data node (master or replica) or a Sentinel."""

    name: str
    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None
    #: Stopped by ``pause()`` (SIGSTOP) and not resumed yet: it answers nothing.
    paused: bool = False
    #: Where it runs: this machine's loopback, or a test host in a network namespace.
    host: Host = LOCALHOST

    @property
    def address(self) -> str:
        return f"{self.host.address}:{self.port}"

    @property
    def config(self) -> Path:
        return self.directory / "redis.conf"

    @property
    def log(self) -> Path:
        return self.directory / "redis.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, *, sentinel: bool = False) -> None:
        args = ["redis-server", str(self.config)] + (["--sentinel"] if sentinel else [])
        self.process = subprocess.Popen(
            self.host.command(args), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )

    def kill(self) -> None:
        """``kill -9``: no shutdown, no goodbye to replicas or clients."""
        if self.running:
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def pause(self) -> None:
        """SIGSTOP: the process holds its connections but answers nothing (a hung node)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)
        self.paused = False

    def stop(self) -> None:
        if self.running:
            assert self.process is not None
            self.process.send_signal(signal.SIGCONT)  # a paused process would not act on SIGTERM
            stop_process(self.process, timeout=10)


def acl_user(name: str, password: str | None) -> list[str]:
    """Config lines: the ``default`` user off, ``name`` with ``password`` allowed everything (what a
    Sentinel needs of the nodes it manages, and what the service needs)."""
    return ["user default off", f"user {name} on >{password} ~* &* +@all"]


def common_config(node: RedisNode, tls: TlsFiles | None) -> list[str]:
    """Config lines of every process: its host's address, its own directory and log, no persistence (a
    killed node comes back empty); with ``tls`` the plain port is off."""
    return [
        f"port {0 if tls else node.port}",
        f"bind {node.host.address}",
        # Without a password Redis answers only loopback clients; a test host is reached at its address.
        "protected-mode no",
        f'dir "{node.directory}"',
        f'logfile "{node.log}"',
        "daemonize no",
        'save ""',
        "appendonly no",
    ]


def tls_config(node: RedisNode, tls: TlsFiles | None) -> list[str]:
    """Config lines for TLS only (``tls-port``); clients need no certificate."""
    if tls is None:
        return []
    return [
        f"tls-port {node.port}",
        f'tls-cert-file "{tls.cert}"',
        f'tls-key-file "{tls.key}"',
        f'tls-ca-cert-file "{tls.ca}"',
        "tls-auth-clients no",
        # Replicas to their master, Sentinels to the nodes and to each other: TLS too.
        "tls-replication yes",
    ]


def access_settings(tls: TlsFiles | None, **settings: str | None) -> dict[str, str]:
    """The service's settings among ``settings`` that have a value (user names, passwords), and with
    ``tls`` the TLS ones (the CA as a file)."""
    env = {name: value for name, value in settings.items() if value}
    if tls is not None:
        env |= {"REDIS_TLS": "true", "REDIS_TLS_CA_FILE": str(tls.ca)}
    return env


def node_client(
    node: RedisNode, *, username: str | None, password: str | None, tls: TlsFiles | None, timeout: float
) -> redis.Redis:
    """A client of one process, with TLS (checking the node's certificate against ``tls``'s CA) if given."""
    return redis.Redis(
        host=node.host.address,
        port=node.port,
        username=username,
        password=password,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        ssl=tls is not None,
        ssl_ca_certs=str(tls.ca) if tls is not None else None,
    )


def wait_until(predicate: Callable[[], object], what: str, timeout: float, *, logs: Path) -> None:
    """Poll ``predicate`` until it is true; a node that does not answer yet counts as false. Raises
    ``TimeoutError`` saying ``what`` did not happen, and where the processes' logs are."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError, AssertionError, IndexError, KeyError):
            if predicate():
                return
        time.sleep(0.05)
    raise TimeoutError(f"{what} within {timeout}s (logs in {logs})")


class RedisSentinelGroup:
    """A Sentinel-managed Redis on loopback: one master, ``replicas`` replicas, ``sentinels`` Sentinels."""

    def __init__(
        self,
        *,
        master_name: str = "mymaster",
        replicas: int = 1,
        sentinels: int = 3,
        quorum: int = 2,
        password: str | None = None,
        sentinel_password: str | None = None,
        username: str | None = None,
        sentinel_username: str | None = None,
        down_after_milliseconds: int = 1000,
        failover_timeout_milliseconds: int = 5000,
        tls: TlsFiles | None = None,
        hosts: Mapping[str, Host] | None = None,
    ) -> None:
        """``hosts``: a test host per process name (``redis-0`` the first master, ``redis-1`` …,
        ``sentinel-0`` …), else every process on loopback."""
        self.master_name = master_name
        self._hosts = hosts or {}
        #: With certificate files (testkit/tls.py) every process listens with TLS only (``port 0``,
        #: ``tls-port``), replicas and Sentinels connect with TLS too; clients need no certificate.
        self.tls = tls
        self.password = password
        self.sentinel_password = sentinel_password
        #: With a username the ``default`` user is switched off: only that ACL user (with the password)
        #: gets in, as on a managed Redis with ACLs.
        self.username = username
        self.sentinel_username = sentinel_username
        if (username and not password) or (sentinel_username and not sentinel_password):
            raise ValueError("an ACL user here needs its password")
        self._quorum = quorum
        self._down_after = down_after_milliseconds
        self._failover_timeout = failover_timeout_milliseconds
        self.root = Path(tempfile.mkdtemp(prefix="redis-sentinel-"))
        self.data_nodes = [self._node(f"redis-{n}") for n in range(1 + replicas)]
        self.sentinel_nodes = [self._node(f"sentinel-{n}") for n in range(sentinels)]

    def _node(self, name: str) -> RedisNode:
        directory = self.root / name
        directory.mkdir()
        return RedisNode(
            name=name, port=free_port(), directory=directory, host=self._hosts.get(name, LOCALHOST)
        )

    # -- settings for the service --------------------------------------------------------------------

    @property
    def sentinels_setting(self) -> str:
        """``REDIS_SENTINELS`` for this group."""
        return ",".join(node.address for node in self.sentinel_nodes)

    def target(self, **settings: Any) -> RedisTarget:
        """The service's ``RedisTarget`` for this group (what ``service_env`` configures), for a store
        made in the test's own process; ``settings``: more of its fields."""
        return RedisTarget(
            sentinels=tuple((node.host.address, node.port) for node in self.sentinel_nodes),
            sentinel_master=self.master_name,
            username=self.username,
            password=self.password,
            sentinel_username=self.sentinel_username,
            sentinel_password=self.sentinel_password,
            tls=self.tls is not None,
            tls_ca=self.tls.ca.read_text() if self.tls is not None else None,
            **settings,
        )

    def service_env(self, **extra: str) -> dict[str, str]:
        env = {"REDIS_SENTINELS": self.sentinels_setting, "REDIS_SENTINEL_MASTER": self.master_name}
        env |= access_settings(
            self.tls,
            REDIS_USERNAME=self.username,
            REDIS_PASSWORD=self.password,
            REDIS_SENTINEL_USERNAME=self.sentinel_username,
            REDIS_SENTINEL_PASSWORD=self.sentinel_password,
        )
        return {**env, **extra}

    # -- life cycle ----------------------------------------------------------------------------------

    def __enter__(self) -> RedisSentinelGroup:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    def start(self, timeout: float = 30.0) -> RedisSentinelGroup:
        """Master, replicas, Sentinels; returns once every Sentinel sees the replicas and the other
        Sentinels (a fail-over needs a majority of Sentinels that know each other)."""
        try:
            master, *replicas = self.data_nodes
            self._write_data_config(master, replica_of=None)
            master.start()
            self._wait_ping(master, timeout)
            for replica in replicas:
                self._write_data_config(replica, replica_of=master)
                replica.start()
            for replica in replicas:
                self._wait_replica_synced(replica, timeout)
            for sentinel in self.sentinel_nodes:
                self._write_sentinel_config(sentinel, master)
                sentinel.start(sentinel=True)
            self._wait_sentinels_settled(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every process (Sentinels first, so that none starts a fail-over), remove the temp dir."""
        for node in [*self.sentinel_nodes, *self.data_nodes]:
            with contextlib.suppress(Exception):
                node.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    # -- configuration -------------------------------------------------------------------------------

    def url(self, node: RedisNode) -> str:
        """A ``REDIS_URL`` for one data node: ``rediss://`` with the CA in the query (redis-py's
        ``ssl_ca_certs``) when the group runs with TLS."""
        if self.tls is None:
            return f"redis://{node.address}/0"
        return f"rediss://{node.address}/0?ssl_ca_certs={self.tls.ca}"

    def _write_data_config(self, node: RedisNode, *, replica_of: RedisNode | None) -> None:
        # Redis waits 5 s by default before a full sync, for more replicas to share it; a replica that
        # (re)joins here should not.
        lines = [*common_config(node, self.tls), *tls_config(node, self.tls), "repl-diskless-sync-delay 0"]
        if self.username:
            lines += [*acl_user(self.username, self.password), f"masteruser {self.username}"]
            lines.append(f"masterauth {self.password}")
        elif self.password:
            lines += [f"requirepass {self.password}", f"masterauth {self.password}"]
        if replica_of is not None:
            lines.append(f"replicaof {replica_of.host.address} {replica_of.port}")
        node.config.write_text("\n".join(lines) + "\n")

    def _write_sentinel_config(self, node: RedisNode, master: RedisNode) -> None:
        # Sentinel rewrites this file (fail-overs, discovered peers): it must be its own, and writable.
        lines = [
            *common_config(node, self.tls)[:5],
            *tls_config(node, self.tls),
            f"sentinel monitor {self.master_name} {master.host.address} {master.port} {self._quorum}",
            f"sentinel down-after-milliseconds {self.master_name} {self._down_after}",
            f"sentinel failover-timeout {self.master_name} {self._failover_timeout}",
            f"sentinel parallel-syncs {self.master_name} 1",
        ]
        if self.username:
            lines.append(f"sentinel auth-user {self.master_name} {self.username}")
        if self.password:
            lines.append(f"sentinel auth-pass {self.master_name} {self.password}")
        if self.sentinel_username:
            # Sentinels authenticate to each other as this user (Redis 6.2+).
            lines += [
                *acl_user(self.sentinel_username, self.sentinel_password),
                f"sentinel sentinel-user {self.sentinel_username}",
                f"sentinel sentinel-pass {self.sentinel_password}",
            ]
        elif self.sentinel_password:
            # Sentinels authenticate to each other with their own requirepass.
            lines += [
                f"requirepass {self.sentinel_password}",
                f"sentinel sentinel-pass {self.sentinel_password}",
            ]
        node.config.write_text("\n".join(lines) + "\n")

    # -- clients -------------------------------------------------------------------------------------

    def client(self, node: RedisNode, *, timeout: float = 2.0) -> redis.Redis:
        """A client of one process (data node or Sentinel), with the right password."""
        is_sentinel = node in self.sentinel_nodes
        username = self.sentinel_username if is_sentinel else self.username
        password = self.sentinel_password if is_sentinel else self.password
        return node_client(node, username=username, password=password, tls=self.tls, timeout=timeout)

    def _query(self, node: RedisNode, *command: str | int) -> object:
        with self.client(node) as client:
            return client.execute_command(*command)

    def node_at(self, port: int) -> RedisNode:
        return next(node for node in self.data_nodes if node.port == port)

    def _masters_named(self) -> tuple[int, list[int]]:
        """How many Sentinels run, and the master port each of those that answered names."""
        running = [s for s in self.sentinel_nodes if s.running]
        ports = []
        for sentinel in running:
            with contextlib.suppress(redis.RedisError):
                reply = self._query(sentinel, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
                assert isinstance(reply, list)
                ports.append(int(reply[1]))
        return len(running), ports

    def master_by_sentinels(self) -> RedisNode | None:
        """The master a majority of the running Sentinels report, or None while they disagree."""
        running, ports = self._masters_named()
        for port in set(ports):
            if ports.count(port) > running // 2:
                return self.node_at(port)
        return None

    def role(self, node: RedisNode) -> str | None:
        """``master`` or ``slave`` as the node itself says; None if it does not answer."""
        try:
            reply = self._query(node, "ROLE")
        except redis.RedisError:
            return None
        assert isinstance(reply, list)
        role = reply[0]
        return role.decode() if isinstance(role, bytes) else str(role)

    def master(self) -> RedisNode:
        master = self.master_by_sentinels()
        assert master is not None, "the Sentinels do not agree on a master"
        return master

    def replicas(self) -> list[RedisNode]:
        master = self.master()
        return [node for node in self.data_nodes if node is not master]

    # -- faults --------------------------------------------------------------------------------------

    def kill_master(self) -> RedisNode:
        """``kill -9`` the current master; returns it (its data is gone: no persistence)."""
        master = self.master()
        master.kill()
        return master

    def wait_failover(self, old: RedisNode, timeout: float = 30.0) -> tuple[RedisNode, float]:
        """Until the Sentinels agree on a master other than ``old`` and it says it is one; returns it and
        the seconds waited."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            master = self.master_by_sentinels()
            if master is not None and master is not old and self.role(master) == "master":
                return master, time.monotonic() - started
            time.sleep(0.1)
        raise TimeoutError(f"no fail-over away from {old.address} within {timeout}s")

    def back_up_replication(self, megabytes: int = 24) -> None:
        """Write ``megabytes`` MB of filler to the master. With a replica paused, this fills the socket
        buffers between them (a few MB on loopback), so that the replication stream of whatever the
        master writes next waits in the master's own memory, and dies with it: a replica that lags, as
        over a slow or congested link. Without this, bytes already in the paused replica's socket buffer
        would reach it after a ``kill -9`` of the master."""
        filler = b"x" * (1024 * 1024)
        with self.client(self.master(), timeout=30) as client:
            for _ in range(megabytes):
                client.set("redis-sentinel-group:filler", filler)
            client.delete("redis-sentinel-group:filler")

    def stop_node(self, node: RedisNode) -> None:
        """A clean stop (SIGTERM), as a pod being deleted."""
        node.stop()

    def start_as_replica(self, node: RedisNode, timeout: float = 30.0) -> None:
        """(Re)start ``node`` as a replica of the current master, empty, as a restarted pod whose start
        script asks the Sentinels for the master (Bitnami's chart does that); returns once it is synced."""
        assert not node.running
        master = self.master()
        self._write_data_config(node, replica_of=master)
        node.start()
        self._wait_replica_synced(node, timeout)

    # -- waiting -------------------------------------------------------------------------------------

    def _wait(self, predicate: Callable[[], object], what: str, timeout: float) -> None:
        wait_until(predicate, what, timeout, logs=self.root)

    def _wait_ping(self, node: RedisNode, timeout: float) -> None:
        self._wait(lambda: self._query(node, "PING"), f"{node.name} did not answer", timeout)

    def wait_replica_synced(self, node: RedisNode, timeout: float = 30.0) -> float:
        """Until ``node`` is a replica with its link to the master up and synced (an old master after
        a partition heals: the Sentinels demote it, and it resyncs); the seconds waited."""
        started = time.monotonic()
        self._wait(lambda: self.role(node) == "slave", f"{node.name} was not made a replica", timeout)
        self._wait_replica_synced(node, timeout)
        return time.monotonic() - started

    def wait_whole(self, timeout: float = 30.0) -> None:
        """Until every running Sentinel names the same master, it says it is one, and every other running
        data node is its replica with the link up and synced: where a test starts that shares the group
        with one that made it fail over (the Sentinels reconfigure a returning node in their own time)."""

        def whole() -> bool:
            running, ports = self._masters_named()
            if len(ports) != running or len(set(ports)) != 1:
                return False
            master = self.node_at(ports[0])
            if self.role(master) != "master":
                return False
            replicas = [node for node in self.data_nodes if node is not master and node.running]
            return all(self._synced(node, master_port=master.port) for node in replicas)

        self._wait(whole, "the group did not settle on one master with synced replicas", timeout)

    def _synced(self, node: RedisNode, *, master_port: int | None = None) -> bool:
        """Whether ``node`` is a replica with its link up and no sync in progress (of the master on
        ``master_port``, if given)."""
        with self.client(node) as client:
            info = client.info("replication")
        if master_port is not None and int(info.get("master_port", 0)) != master_port:
            return False
        return info.get("master_link_status") == "up" and not info.get("master_sync_in_progress")

    def _wait_replica_synced(self, node: RedisNode, timeout: float) -> None:
        self._wait(lambda: self._synced(node), f"{node.name} did not sync with its master", timeout)

    def _wait_sentinels_settled(self, timeout: float) -> None:
        replicas = len(self.data_nodes) - 1
        others = len(self.sentinel_nodes) - 1

        def settled() -> bool:
            for sentinel in self.sentinel_nodes:
                with self.client(sentinel) as client:
                    state = client.sentinel_master(self.master_name)
                if int(state["num-slaves"]) < replicas or int(state["num-other-sentinels"]) < others:
                    return False
            return True

        self._wait(settled, "the Sentinels did not find the replicas and each other", timeout)


def main() -> None:
    with RedisSentinelGroup() as group:
        print(f"master {group.master().address}; replicas {[r.address for r in group.replicas()]}")
        print(f"REDIS_SENTINELS={group.sentinels_setting} REDIS_SENTINEL_MASTER={group.master_name}")
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":
    main()
