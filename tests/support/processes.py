"""The service and the LiveKit emulator as real processes, as they run in production."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

API_KEY = "testkey"
API_SECRET = "test-secret-" + "x" * 32
AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
LOG_DIR = Path(os.environ.get("TEST_LOG_DIR", "/tmp/livekit-signaling-tests"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class EmulatorProcess:
    def __init__(self, *, webhook_url: str | None = None, mute_delay: float = 1.0) -> None:
        args = [
            sys.executable, "-m", "livekit_signaling.emulator", "--port", "0",
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
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._log.close()


@dataclass
class Names:
    """uuid-named topology, so that concurrent runs never see each other's messages."""

    prefix: str = field(default_factory=lambda: f"test-{uuid.uuid4().hex[:10]}")

    @property
    def command_exchange(self) -> str:
        return f"{self.prefix}.commands"

    @property
    def event_exchange(self) -> str:
        return f"{self.prefix}.events"

    @property
    def queue(self) -> str:
        return f"{self.prefix}.signaling"

    @property
    def dead_letter(self) -> str:
        return f"{self.prefix}.dead-letter"

    @property
    def redis_prefix(self) -> str:
        return self.prefix


class ServiceProcess:
    """``livekit-signaling run`` with the test's names; ``start`` waits until ``/readyz`` says ready."""

    def __init__(
        self,
        names: Names,
        livekit_url: str,
        *,
        partitions: int = 4,
        env: Mapping[str, str] | None = None,
        name: str = "service",
    ) -> None:
        self.names = names
        self.port = free_port()
        self.env = {
            **os.environ,
            "AMQP_URL": AMQP_URL,
            "LIVEKIT_URL": livekit_url,
            "LIVEKIT_API_KEY": API_KEY,
            "LIVEKIT_API_SECRET": API_SECRET,
            "LIVEKIT_PUBLIC_URL": "wss://livekit.example.test",
            "LIVEKIT_SERVICE_URL": "http://livekit.internal.test:7880",
            "SIGNALING_COMMAND_EXCHANGE": names.command_exchange,
            "SIGNALING_EVENT_EXCHANGE": names.event_exchange,
            "SIGNALING_QUEUE": names.queue,
            "SIGNALING_DEAD_LETTER_EXCHANGE": names.dead_letter,
            "SIGNALING_PARTITIONS": str(partitions),
            "SIGNALING_HTTP_HOST": "127.0.0.1",
            "SIGNALING_HTTP_PORT": str(self.port),
            "REDIS_KEY_PREFIX": names.redis_prefix,
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
            [sys.executable, "-m", "livekit_signaling", *self.command], env=self.env, stdout=log, stderr=log
        )
        log.close()
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def http(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as response:
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

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


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
