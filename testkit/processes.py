"""The service and the LiveKit emulator as real processes, as they run in production, each on a uuid-named
topology (``Names``): what the tests and the bench start, watch and stop."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from livekit_signaling.app.settings import Settings
from testkit.hosts import LOCALHOST, Host


def setting_default(name: str) -> Any:
    """The service's default for the ``Settings`` field ``name``: what a test runs with unless it sets it."""
    return next(item.default for item in fields(Settings) if item.name == name)


API_KEY = "testkey"
API_SECRET = "test-secret-" + "x" * 32
AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
LOG_DIR = Path(os.environ.get("TEST_LOG_DIR", "/tmp/livekit-signaling-tests"))
#: Partition queues of a service the tests start, unless a test needs another number: more than one, so
#: that the consistent-hash exchange in front of them is part of every test.
PARTITIONS = 4


#: The test's own servers listen on ports below the kernel's ephemeral range (``ip_local_port_range``,
#: 32768-60999 by default), so that a server stopped for a while (a RabbitMQ node in a rolling restart,
#: a killed Redis master started again as a replica) gets its port back: no outgoing connection and no
#: ``bind(0)`` takes a port from outside that range meanwhile. Test workers running side by side claim
#: ports with a file each; a process's claims go when it exits.
PORTS = range(10_000, 32_768)
PORT_CLAIMS = Path(tempfile.gettempdir()) / "livekit-signaling-test-ports"
#: A claim this old is left from an earlier run that was killed (a whole CI run takes under half an hour).
STALE_CLAIM_SECONDS = 6 * 3600
_claimed: list[Path] = []


def free_port(*, offsets: Sequence[int] = (0,), host: str = "127.0.0.1") -> int:
    """A port nothing listens on, claimed for this process, with ``port + offset`` for each of
    ``offsets`` free and claimed too (a Redis Cluster node's bus port is its port + 10000)."""
    PORT_CLAIMS.mkdir(parents=True, exist_ok=True)
    for _ in range(1000):
        port = random.randrange(PORTS.start, PORTS.stop - max(offsets))
        if all(_claim(port + offset, host) for offset in offsets):
            return port
    raise RuntimeError(f"no free port in {PORTS.start}-{PORTS.stop - 1} for offsets {tuple(offsets)}")


def _claim(port: int, host: str) -> bool:
    claim = PORT_CLAIMS / str(port)
    try:
        if time.time() - claim.stat().st_mtime < STALE_CLAIM_SECONDS:
            return False
        # Left by a killed run: whoever renames it away first may claim the port.
        os.rename(claim, claim.with_name(f"{port}.stale-{os.getpid()}"))
        os.unlink(claim.with_name(f"{port}.stale-{os.getpid()}"))
    except FileNotFoundError:
        pass
    try:
        claim.touch(exist_ok=False)
    except FileExistsError:
        return False
    if not _claimed:
        atexit.register(_release_claims)
    _claimed.append(claim)
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _release_claims() -> None:
    for claim in _claimed:
        claim.unlink(missing_ok=True)


def stop_process(process: subprocess.Popen[bytes] | None, timeout: float = 20.0) -> None:
    """SIGTERM, then SIGKILL if the process has not exited within ``timeout`` seconds; nothing if it is
    not running."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie does not; one of another user does)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    return False


def wait_for(predicate: Callable[[], bool], *, timeout: float, interval: float = 0.05) -> float | None:
    """Poll ``predicate`` (blocking); the seconds it took, or None on timeout."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(interval)
    return None


class EmulatorProcess:
    """``python -m livekit_signaling.emulator`` on a free port; ``url`` once it listens."""

    def __init__(
        self, *, webhook_url: str | None = None, mute_delay: float = 1.0, bind: str = "127.0.0.1"
    ) -> None:
        """``bind``: the address it listens on (a test network's gateway, for services on its hosts)."""
        args = [
            sys.executable, "-m", "livekit_signaling.emulator", "--host", bind, "--port", "0",
            "--api-key", API_KEY, "--api-secret", API_SECRET,
            "--unknown-participant-mute-delay", str(mute_delay),
        ]  # fmt: skip
        if webhook_url:
            args += ["--webhook-url", webhook_url]
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self._log = (LOG_DIR / f"emulator-{uuid.uuid4().hex[:8]}.log").open("wb")
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self._log)
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode().strip()
        if not line.startswith("LISTENING "):
            self.process.kill()
            raise RuntimeError(f"emulator did not start: {line!r}")
        self.url = line.removeprefix("LISTENING ")

    def stop(self) -> None:
        stop_process(self.process, timeout=10)
        self._log.close()


@dataclass
class Names:
    """uuid-named topology, so that concurrent runs never see each other's messages."""

    prefix: str = field(default_factory=lambda: f"test-{uuid.uuid4().hex[:10]}")
    command_exchange: str = field(init=False)
    event_exchange: str = field(init=False)
    queue: str = field(init=False)
    dead_letter: str = field(init=False)

    def __post_init__(self) -> None:
        self.command_exchange = f"{self.prefix}.commands"
        self.event_exchange = f"{self.prefix}.events"
        self.queue = f"{self.prefix}.signaling"
        self.dead_letter = f"{self.prefix}.dead-letter"

    @property
    def redis_prefix(self) -> str:
        return self.prefix

    @property
    def hash_exchange(self) -> str:
        """The consistent-hash exchange in front of the partition queues (more than one partition)."""
        return f"{self.queue}.partitions"

    def partition_queues(self, partitions: int = PARTITIONS) -> list[str]:
        """The queues the service consumes from: ``<queue>.<n>``, or ``<queue>`` itself for one."""
        return [self.queue] if partitions == 1 else [f"{self.queue}.{n}" for n in range(partitions)]

    def environment(self, partitions: int = PARTITIONS) -> dict[str, str]:
        """The settings that put the service (or the bench's baseline) on these names."""
        return {
            "SIGNALING_COMMAND_EXCHANGE": self.command_exchange,
            "SIGNALING_EVENT_EXCHANGE": self.event_exchange,
            "SIGNALING_QUEUE": self.queue,
            "SIGNALING_DEAD_LETTER_EXCHANGE": self.dead_letter,
            "SIGNALING_PARTITIONS": str(partitions),
            "REDIS_KEY_PREFIX": self.redis_prefix,
        }


class ServiceProcess:
    """``livekit-signaling run`` with the test's names; ``start`` waits until ``/readyz`` says ready.
    ``host``: where it runs (a test host in a network namespace serves HTTP on its address)."""

    def __init__(
        self,
        names: Names,
        livekit_url: str,
        *,
        partitions: int = PARTITIONS,
        env: Mapping[str, str] | None = None,
        name: str = "service",
        host: Host = LOCALHOST,
    ) -> None:
        self.names = names
        self.host = host
        self.port = free_port()
        self.env = {
            **os.environ,
            "AMQP_URL": AMQP_URL,
            "LIVEKIT_URL": livekit_url,
            "LIVEKIT_API_KEY": API_KEY,
            "LIVEKIT_API_SECRET": API_SECRET,
            "LIVEKIT_PUBLIC_URL": "wss://livekit.example.test",
            "LIVEKIT_SERVICE_URL": "http://livekit.internal.test:7880",
            **names.environment(partitions),
            "SIGNALING_HTTP_HOST": host.address,
            "SIGNALING_HTTP_PORT": str(self.port),
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "INFO",
            "LIVEKIT_REQUEST_TIMEOUT_SECONDS": "0.5",
            "COMMAND_DEADLINE_SECONDS": "2",
            **(env or {}),
        }
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.log_path = LOG_DIR / f"{names.prefix}-{name}-{uuid.uuid4().hex[:6]}.log"
        self.process: subprocess.Popen[bytes] | None = None

    #: The sub-command and its arguments.
    command: tuple[str, ...] = ("run",)

    def start(self, *, wait_ready: bool = True, timeout: float = 20.0) -> ServiceProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.host.command([sys.executable, "-m", "livekit_signaling", *self.command]),
            env=self.env,
            stdout=log,
            stderr=log,
        )
        log.close()
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def http(self, path: str) -> tuple[int, str]:
        try:
            url = f"http://{self.host.address}:{self.port}{path}"
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def status(self) -> dict[str, str]:
        """The ``key: value`` lines of ``/readyz`` (``amqp_node``, ``active_partitions`` …)."""
        _, body = self.http("/readyz")
        fields = (line.partition(": ") for line in body.splitlines())
        return {key: value for key, sep, value in fields if sep}

    def is_ready(self) -> bool:
        with contextlib.suppress(OSError):
            return self.http("/readyz")[0] == 200
        return False

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"service exited with {self.process.returncode}:\n{self.logs()[-3000:]}")
            if self.is_ready():
                return
            time.sleep(0.05)
        raise TimeoutError(f"service not ready after {timeout}s:\n{self.logs()[-3000:]}")

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a metric's samples whose labels include ``labels``."""
        _, text = self.http("/metrics")
        total = 0.0
        for line in text.splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            series, _, value = line.rpartition(" ")
            metric_name, _, label_text = series.partition("{")
            if metric_name != name:
                continue
            if all(f'{key}="{val}"' in label_text for key, val in labels.items()):
                total += float(value)
        return total

    def wait_metric(self, name: str, minimum: float, *, timeout: float = 5.0, **labels: str) -> float:
        """Poll until the metric reaches ``minimum`` (metrics are updated just after the ack, so an
        event can arrive before its command is counted)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.metric(name, **labels)
            if value >= minimum or time.monotonic() > deadline:
                return value
            time.sleep(0.02)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_records(self) -> list[dict[str, Any]]:
        """The JSON lines of its log (``LOG_FORMAT=json``), decoded; other lines are passed over."""
        records = []
        for line in self.logs().splitlines():
            with contextlib.suppress(ValueError):
                records.append(json.loads(line))
        return records

    def open_fds(self) -> int:
        """How many file descriptors the process holds now."""
        assert self.process is not None
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        stop_process(self.process)


class ReadinessPoller:
    """Polls a service's /readyz (and the amqp_connected gauge) in a thread, recording transitions."""

    def __init__(self, service: ServiceProcess, *, interval: float = 0.1) -> None:
        self.service = service
        self.interval = interval
        self.samples: list[tuple[float, int, float]] = []  # (monotonic time, status, amqp_connected)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="readyz-poller")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status, _ = self.service.http("/readyz")
                connected = self.service.metric("livekit_signaling_amqp_connected")
            except OSError:
                status, connected = 0, -1.0
            self.samples.append((time.monotonic(), status, connected))
            self._stop.wait(self.interval)

    def __enter__(self) -> ReadinessPoller:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def first(self, predicate: Callable[[int, float], bool], *, after: float) -> float | None:
        """The time of the first sample after ``after`` for which ``predicate(status, connected)``."""
        for at, status, connected in list(self.samples):
            if at >= after and predicate(status, connected):
                return at
        return None


class DevProcess(ServiceProcess):
    """``livekit-signaling dev`` (the service, its built-in emulator and the console) with the test's
    names and free ports; the dev key and secret are its own."""

    def __init__(self, names: Names) -> None:
        super().__init__(names, "unused", partitions=1, name="dev")
        for name in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET", "LIVEKIT_PUBLIC_URL"):
            self.env.pop(name, None)
        self.livekit_port = free_port()
        self.command = ("dev", "--livekit-port", str(self.livekit_port), "--partitions", "1")

    @property
    def console_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def livekit_url(self) -> str:
        return f"http://127.0.0.1:{self.livekit_port}"


def cli_send(
    env: Mapping[str, str],
    room: str,
    participant: str,
    command: Mapping[str, Any],
    *,
    role: str | None = None,
    timeout: float = 2.0,
) -> tuple[str, dict[str, Any]]:
    """``livekit-signaling send`` as an operator runs it (``env`` names the broker and exchanges): the
    routing key and the decoded body of the one answer it prints. ``role`` None = the CLI's default."""
    args = ["--room", room, "--participant", participant, "--timeout", str(timeout)]
    args += ["--role", role] if role is not None else []
    completed = subprocess.run(
        [sys.executable, "-m", "livekit_signaling", "send", *args, json.dumps(command)],
        env={**env, "SIGNALING_HTTP_PORT": "0"},
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr.decode()
    [answer] = completed.stdout.decode().splitlines()
    routing_key, _, body = answer.partition(" ")
    decoded: dict[str, Any] = json.loads(body)
    return routing_key, decoded
