"""Redis Cluster (``REDIS_CLUSTER_NODES``): redis-py's asyncio ``RedisCluster``, and the one thing it does
not do for the store: run a room's commands and their ``WAIT`` on one connection to the master that
holds the room's slot.

redis-py routes a keyed command by its slot and follows ``MOVED`` and ``ASK`` itself, but it sends
``WAIT`` (which has no key) to an arbitrary node, and in a pipeline it re-sends a redirected command on
its own, on another connection, while the pipeline's ``WAIT`` still counts the first one's: a write that
moved would be confirmed by a ``WAIT`` that never saw it. (Its ``ASK`` handling for a single command
sends ``ASKING`` on one pooled connection and the command on another, so with more than one connection
open a key being migrated cannot be read at all: "TTL exhausted". Seen with redis-py 8.1.)

So ``run_on_slot_owner`` pins every command of a pipeline to the slot's master (one connection:
redis-py's cluster pipeline sends each node's commands on one), lets no redirection happen behind its
back, and follows them itself by running the whole pipeline again: after ``MOVED`` (the slot moved:
fail-over or finished reshard) on the new owner, after ``ASK`` (the slot is being migrated and the key
is already at its new node) on that node, each command after an ``ASKING`` (which admits only the next
command). The store's pipelines each touch one key, so a migration (which moves key by key) never
splits one, and each is safe to run again (a script is atomic; a deletion's commands are idempotent).
``TRYAGAIN`` and ``CLUSTERDOWN`` are transient (``connection.is_transient``): the command processor
retries the step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.exceptions import AskError, MovedError, TryAgainError

from livekit_signaling.store.target import RedisTarget

#: Redirections one call follows before it gives up (as a transient failure): a slot migrated while
#: the call was redirected to it, and so on; redis-py's own limit is 16.
MAX_REDIRECTIONS = 5
#: After a failure that may mean a changed topology, the slot map is read again at most this often.
REFRESH_INTERVAL_SECONDS = 0.5


class RedirectionsExhausted(TryAgainError):
    """The slot kept moving under the call: transient, like ``TRYAGAIN``."""


def cluster_client(target: RedisTarget, *, max_connections: int, **connection: Any) -> RedisCluster:
    """The cluster client for ``target``: ``connection`` are the timeouts and the retry policy,
    ``max_connections`` is per node. Full slot coverage is not required: while a master's replica takes
    over, the other masters' rooms carry on."""
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in target.cluster_nodes],
        username=target.username,
        password=target.password,
        max_connections=max_connections,
        require_full_coverage=False,
        **target.tls_kwargs,
        **connection,
    )


class _PinnedPipeline(ClusterPipeline):
    """A cluster pipeline whose every command goes to ``node``, whatever its keys; ``asking``: each one
    after an ``ASKING`` (whose results ``results`` drops)."""

    def __init__(self, client: RedisCluster, node: ClusterNode, *, asking: bool) -> None:
        super().__init__(client, transaction=False)
        self._node = node
        self._asking = asking

    def execute_command(self, *args: Any, **kwargs: Any) -> ClusterPipeline:
        if self._asking:
            super().execute_command("ASKING", target_nodes=self._node)
        return super().execute_command(*args, target_nodes=self._node, **kwargs)

    def results(self, replies: list[Any]) -> list[Any]:
        return replies[1::2] if self._asking else replies


async def run_on_slot_owner(
    client: RedisCluster, key: str, queue: Callable[[ClusterPipeline], object]
) -> list[Any]:
    """Run the commands ``queue`` adds to a pipeline on one connection to the master of ``key``'s slot;
    their results. ``queue`` may be called again (after a redirection): it must only queue commands."""
    await client.initialize()  # nothing to do once the slot map is known
    node = client.get_node_from_key(key)
    asking = False
    for _ in range(MAX_REDIRECTIONS):
        if node is None:  # get_node_from_key raises instead; None only for replicas
            raise RedirectionsExhausted(f"no master for the slot of {key!r}")
        # redis-py's typing marks an attribute of ClusterPipeline abstract that it sets at run time.
        pipe = _PinnedPipeline(client, node, asking=asking)  # type: ignore[abstract]
        queue(pipe)
        try:
            results = await pipe.execute(allow_redirections=False)
        except MovedError as moved:
            await client.nodes_manager.move_slot(moved)
            node, asking = client.get_node_from_key(key), False
            continue
        except AskError as ask:
            target = client.get_node(host=ask.host, port=ask.port)
            if target is None:  # a node the slot map does not know yet
                await client.nodes_manager.initialize()
                target = client.get_node(host=ask.host, port=ask.port)
            if target is None:
                raise RedirectionsExhausted(f"ASK to unknown node {ask.host}:{ask.port}") from ask
            node, asking = target, True
            continue
        return pipe.results(results)
    raise RedirectionsExhausted(f"slot of {key!r} still moving after {MAX_REDIRECTIONS} redirections")


class TopologyRefresher:
    """Reads the slot map again after a failure that may mean a changed topology (a master gone, its
    replica promoted), at most every ``REFRESH_INTERVAL_SECONDS``. redis-py does so itself for a single
    command that failed to connect, but not for a pipeline when its own retries are off (they are: the
    command processor retries, in the room's order)."""

    def __init__(self, client: RedisCluster) -> None:
        self._client = client
        self._last = 0.0

    async def refresh(self) -> None:
        now = time.monotonic()
        if now - self._last < REFRESH_INTERVAL_SECONDS:
            return
        self._last = now
        await self._client.nodes_manager.initialize()
