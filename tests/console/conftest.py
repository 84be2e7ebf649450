"""``livekit-signaling dev`` as a process on a uuid-named topology, one per test module (the browser
test's page and screenshot show only what that module did)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator

import pytest

from testkit.amqp import delete_topology
from testkit.processes import DevProcess, Names


@pytest.fixture(scope="module")
def dev() -> Iterator[DevProcess]:
    names = Names()
    process = DevProcess(names)
    process.env["RECONCILE_INTERVAL_SECONDS"] = "1"  # repairs the page shows come quickly
    process.start()
    # The console is a controller: it finds the exchanges once the service declared them, just after
    # the service is ready.
    deadline = time.monotonic() + 10
    while json.loads(process.http("/console/snapshot")[1])["amqp_connected"] is not True:
        assert time.monotonic() < deadline, "the console did not connect to RabbitMQ"
        time.sleep(0.05)
    yield process
    process.stop()
    asyncio.run(delete_topology(names, 1))


@pytest.fixture
def room() -> str:
    return f"console-{uuid.uuid4().hex[:8]}"
