"""The system RabbitMQ node through its own tools (the tests run as root on the broker's machine, as CI
does): vhosts and users of the test's own, made and removed with ``rabbitmqctl``, and the node's
application stopped and started again."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import quote


def rabbitmqctl(*args: str, timeout: float = 120.0) -> str:
    executable = shutil.which("rabbitmqctl")
    if executable is None:
        raise RuntimeError("rabbitmqctl is needed to create the test's RabbitMQ users and vhosts")
    result = subprocess.run(
        [executable, "-q", *args], check=False, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {args[0]} failed: {result.stdout}{result.stderr}")
    return result.stdout


def broker_running() -> bool:
    """Whether the node's RabbitMQ application runs (``rabbitmq-diagnostics check_running``)."""
    result = subprocess.run(
        ["rabbitmq-diagnostics", "-q", "check_running"], capture_output=True, timeout=30, check=False
    )
    return result.returncode == 0


def wait_broker_running(timeout: float = 60.0) -> float:
    """Until the node's application runs; the seconds that took."""
    started = time.monotonic()
    while not broker_running():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"RabbitMQ not running after {timeout}s")
        time.sleep(0.5)
    return time.monotonic() - started


def ensure_broker_running() -> None:
    """Whatever a test did to the node, leave its application running."""
    if not broker_running():
        with contextlib.suppress(RuntimeError):
            rabbitmqctl("start_app")
        wait_broker_running()


@dataclass(frozen=True)
class BrokerUser:
    vhost: str
    name: str
    password: str

    def url(self, host: str = "127.0.0.1", port: int = 5672) -> str:
        return f"amqp://{self.name}:{self.password}@{host}:{port}/{quote(self.vhost, safe='')}"

    def set_permissions(self, *, configure: str = ".*", write: str = ".*", read: str = ".*") -> None:
        rabbitmqctl("set_permissions", "-p", self.vhost, self.name, configure, write, read)


@contextmanager
def vhost_with_user(*, configure: str = ".*", write: str = ".*", read: str = ".*") -> Iterator[BrokerUser]:
    """A uuid-named vhost and a user with these permissions on it; both deleted afterwards."""
    tag = uuid.uuid4().hex[:10]
    user = BrokerUser(vhost=f"test-{tag}", name=f"test-{tag}", password=uuid.uuid4().hex)
    rabbitmqctl("add_vhost", user.vhost)
    try:
        rabbitmqctl("add_user", user.name, user.password)
        try:
            user.set_permissions(configure=configure, write=write, read=read)
            yield user
        finally:
            rabbitmqctl("delete_user", user.name)
    finally:
        rabbitmqctl("delete_vhost", user.vhost)
