"""Processes under test: the signaling service, the baseline, the LiveKit emulator; their topology and its
clean-up; CPU and memory probes (psutil)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import aiormq
import psutil  # type: ignore[import-untyped]
import redis.asyncio as redis

from tests.support.amqp import delete_topology
from tests.support.processes import AMQP_URL, REDIS_URL, EmulatorProcess, Names, ServiceProcess

RESULTS = Path(__file__).resolve().parent / "results"
LOGS = RESULTS / "logs"

__all__ = [
    "AMQP_URL",
    "LOGS",
    "REDIS_URL",
    "RESULTS",
    "BaselineTarget",
    "EmulatorProcess",
    "OtlpReceiverProcess",
    "ServiceTarget",
    "Target",
    "cpu_seconds",
    "rabbitmq_pid",
    "rss_bytes",
    "settled_rss",
    "wait_for_broker",
]


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
    #: More environment (W10: the tracing mode).
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.names = _names("svc")
        env = {
            "AMQP_PREFETCH": str(self.prefetch),
            # ServiceProcess carries the integration tests' short timeouts; the bench runs the defaults.
            "LIVEKIT_REQUEST_TIMEOUT_SECONDS": "2.0",
            "COMMAND_DEADLINE_SECONDS": "8.0",
            "REDIS_URL": REDIS_URL if self.use_redis else "",
            **self.extra_env,
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
        asyncio.run(_clean_up(self.names, self.partitions, redis_too=self.use_redis))


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
        n = self.names
        env = {
            **os.environ,
            "AMQP_URL": AMQP_URL,
            "AMQP_PREFETCH": str(self.prefetch),
            "SIGNALING_COMMAND_EXCHANGE": n.command_exchange,
            "SIGNALING_EVENT_EXCHANGE": n.event_exchange,
            "SIGNALING_QUEUE": n.queue,
            "SIGNALING_DEAD_LETTER_EXCHANGE": n.dead_letter,
            "SIGNALING_PARTITIONS": str(self.partitions),
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
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(20)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        asyncio.run(_clean_up(self.names, self.partitions, redis_too=False))


class OtlpReceiverProcess:
    """``python -m tests.support.otlp``: an OTLP/HTTP traces receiver that counts the spans it gets, in a
    process of its own (its parsing is not the target's CPU, nor the load generator's)."""

    def __init__(self) -> None:
        LOGS.mkdir(parents=True, exist_ok=True)
        self._log = (LOGS / "otlp-receiver.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.otlp"], stdout=subprocess.PIPE, stderr=self._log
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode().strip()
        if not line.startswith("LISTENING "):
            self.process.kill()
            raise RuntimeError(f"OTLP receiver did not start: {line!r}")
        #: What ``OTEL_EXPORTER_OTLP_ENDPOINT`` takes.
        self.endpoint = line.removeprefix("LISTENING ")

    def spans(self) -> int:
        """Spans received so far."""
        with urllib.request.urlopen(f"{self.endpoint}/spans", timeout=5) as response:  # noqa: S310 - loopback
            return int(json.loads(response.read())["spans"])

    async def settled(self, *, quiet_seconds: float = 1.0, timeout: float = 60.0) -> int:
        """The count once no span arrived for ``quiet_seconds`` (the exporter sends a batch at least
        every ``OTEL_BSP_SCHEDULE_DELAY``, which W10 sets well below that)."""
        deadline = time.monotonic() + timeout
        count = await asyncio.to_thread(self.spans)
        while time.monotonic() < deadline:
            await asyncio.sleep(quiet_seconds)
            now = await asyncio.to_thread(self.spans)
            if now == count:
                return count
            count = now
        return count

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._log.close()


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


async def _clean_up(
    names: Names, partitions: int, *, redis_too: bool, urls: Sequence[str] = (AMQP_URL,)
) -> None:
    """Delete the exchanges and queues (partitions, hash exchange, dead-letter exchange and queue) and,
    with the Redis store, the run's keys. ``urls``: the broker, or a cluster's nodes."""
    try:
        await delete_topology(names, partitions, urls=urls)
    except (ConnectionError, aiormq.exceptions.AMQPError):
        await asyncio.to_thread(wait_for_broker)
        await delete_topology(names, partitions, urls=urls)
    if redis_too:
        client = redis.from_url(REDIS_URL)
        try:
            keys = [key async for key in client.scan_iter(match=f"{names.redis_prefix}*", count=1000)]
            for start in range(0, len(keys), 1000):
                await client.delete(*keys[start : start + 1000])
        finally:
            await client.aclose()


async def settled_rss(pid: int, *, seconds: float = 1.0) -> int:
    """RSS after letting the process go idle for a moment."""
    await asyncio.sleep(seconds)
    return rss_bytes(pid)
