"""Fixtures of the high-availability tests: one 3-node RabbitMQ cluster for the whole package (about a
minute to start; removed at the end), the fault tests' LiveKit emulator and uuid-named topology."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.reliability.conftest import livekit, topology
from tests.support.rabbit_cluster import RabbitCluster

__all__ = ["cluster", "livekit", "topology"]


@pytest.fixture(scope="session")
def cluster() -> Iterator[RabbitCluster]:
    with RabbitCluster() as started:
        print(f"\nRabbitMQ cluster of {len(started.nodes)} nodes started in {started.started_in:.1f}s")
        yield started
