"""Fixtures of the high-availability tests: one 3-node RabbitMQ cluster for the whole package (about a
minute to start; removed at the end); the fault tests' own (a topology per test, services and load
clients cleaned up after it) come from tests/reliability/conftest.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testkit.rabbit_cluster import RabbitCluster
from tests.reliability.conftest import load_client, names, start_service

__all__ = ["cluster", "load_client", "names", "start_service"]


@pytest.fixture(scope="session")
def cluster() -> Iterator[RabbitCluster]:
    with RabbitCluster() as started:
        print(f"\nRabbitMQ cluster of {len(started.nodes)} nodes started in {started.started_in:.1f}s")
        yield started
