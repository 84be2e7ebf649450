"""The bench's targets (the signaling service, or the baseline) as processes on uuid-named topologies,
removing a run's topology (waiting out a broker another tenant of the machine restarted), and CPU and
memory probes (psutil). The processes themselves, the emulator and the topology's names are testkit's."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import aiormq
import psutil  # type: ignore[import-untyped]

from testkit.amqp import delete_topology
from testkit.cleanup import delete_redis_keys
from testkit.processes import AMQP_URL, REDIS_URL, Names, ServiceProcess, stop_process

RESULTS = Path(__file__).resolve().parent / "results"
LOGS = RESULTS / "logs"


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a process so far (0 when it is gone or unknown)."""
    if pid is None:
        return 0.0
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


def rss_bytes(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def rabbitmq_pid() -> int | None:
    """The broker's Erlang VM, to show how the 2 cores were shared (None when it cannot be seen)."""
    for process in psutil.process_iter(["name", "cmdline"]):
        name = process.info.get("name") or ""
        cmdline = " ".join(process.info.get("cmdline") or [])
        if name.startswith("beam") and "rabbit" in cmdline:
            return int(process.pid)
    return None


class Target(Protocol):
    """A process that consumes commands and publishes events on its own uuid-named topology."""

    label: str
    names: Names
    partitions: int

    @property
    def pid(self) -> int: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


def _names(kind: str) -> Names:
    return Names(prefix=f"bench-{kind}-{uuid.uuid4().hex[:10]}")


@dataclass
class ServiceTarget:
    """``python -m livekit_signaling run`` with production defaults (in-memory store unless ``redis``)."""

    livekit_url: str
    partitions: int
    prefetch: int
    use_redis: bool = False
    label: str = "service"
    #: Settings beside the production defaults.
    settings: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.names = _names("svc")
        env = {
            "AMQP_PREFETCH": str(self.prefetch),
            # ServiceProcess carries the integration tests' short timeouts; the bench runs the defaults.
            "LIVEKIT_REQUEST_TIMEOUT_SECONDS": "2.0",
            "COMMAND_DEADLINE_SECONDS": "8.0",
            "REDIS_URL": REDIS_URL if self.use_redis else "",
            **self.settings,
        }
        self._process = ServiceProcess(self.names, self.livekit_url, partitions=self.partitions, env=env)
        LOGS.mkdir(parents=True, exist_ok=True)
        self._process.log_path = LOGS / f"{self.names.prefix}.log"

    @property
    def pid(self) -> int:
        assert self._process.process is not None
        return self._process.process.pid

    def start(self) -> None:
        self._process.start(timeout=30)

    def stop(self) -> None:
        self._process.stop()
        asyncio.run(remove_run(self.names, self.partitions, redis_keys=self.use_redis))


@dataclass
class BaselineTarget:
    """``python -m bench.baseline`` on the same kind of topology."""

    partitions: int
    prefetch: int
    label: str = "baseline"

    def __post_init__(self) -> None:
        self.names = _names("base")
        self._process: subprocess.Popen[bytes] | None = None
        LOGS.mkdir(parents=True, exist_ok=True)
        self.log_path = LOGS / f"{self.names.prefix}.log"

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def start(self) -> None:
        env = {
            **os.environ,
            "AMQP_URL": AMQP_URL,
            "AMQP_PREFETCH": str(self.prefetch),
            **self.names.environment(self.partitions),
        }
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "bench.baseline"], env=env, stdout=subprocess.PIPE, stderr=log
            )
        assert self._process.stdout is not None
        line = self._process.stdout.readline().decode().strip()
        if line != "READY":
            self._process.kill()
            raise RuntimeError(f"baseline did not start ({line!r}); see {self.log_path}")

    def stop(self) -> None:
        stop_process(self._process)
        asyncio.run(remove_run(self.names, self.partitions, redis_keys=False))


def wait_for_broker(timeout: float = 120.0) -> None:
    """Until RabbitMQ accepts TCP connections again (other tests on this machine may restart it)."""
    parts = urlsplit(AMQP_URL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), timeout=1).close()
        except OSError:
            time.sleep(1)
            continue
        time.sleep(2)  # accepting connections comes slightly before serving them
        return
    raise TimeoutError(f"RabbitMQ not reachable for {timeout:.0f}s")


async def remove_run(
    names: Names, partitions: int, *, redis_keys: bool, urls: Sequence[str] = (AMQP_URL,)
) -> None:
    """Delete the run's exchanges and queues (on the broker, or a cluster's nodes) and, with the Redis
    store, its keys. A broker that is restarting is waited for, and asked again."""
    try:
        await delete_topology(names, partitions, urls=urls)
    except (ConnectionError, aiormq.exceptions.AMQPError):
        await asyncio.to_thread(wait_for_broker)
        await delete_topology(names, partitions, urls=urls)
    if redis_keys:
        await asyncio.to_thread(delete_redis_keys, names.redis_prefix, url=REDIS_URL)


async def settled_rss(pid: int, *, seconds: float = 1.0) -> int:
    """RSS after letting the process go idle for a moment."""
    await asyncio.sleep(seconds)
    return rss_bytes(pid)
