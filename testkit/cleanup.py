"""Removing what a test or a bench run left behind: its service processes, the topology they declared,
queues of its own and the Redis keys under its prefix."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Sequence

import redis

from testkit.amqp import delete_topology
from testkit.processes import AMQP_URL, PARTITIONS, REDIS_URL, Names, ServiceProcess


def delete_redis_keys(prefix: str, *, url: str = REDIS_URL) -> int:
    """Delete every key under ``prefix`` (the service's ``REDIS_KEY_PREFIX``); how many there were."""
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
        return len(keys)
    finally:
        client.close()


async def cleanup(
    names: Names,
    services: Iterable[ServiceProcess],
    *,
    partitions: int = PARTITIONS,
    queues: Iterable[str] = (),
    urls: Sequence[str] = (AMQP_URL,),
) -> None:
    """Stop the services, delete the topology, the test's own queues and its Redis keys. Whatever a
    test left broken (a broker still down, Redis unreachable) does not hide the test's own outcome."""
    for service in services:
        await asyncio.to_thread(service.stop)
    with contextlib.suppress(Exception):
        await delete_topology(names, partitions, urls=urls, queues=queues)
    with contextlib.suppress(Exception):
        await asyncio.to_thread(delete_redis_keys, names.redis_prefix)
