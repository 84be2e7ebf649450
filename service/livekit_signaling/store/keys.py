"""The names of the Redis store's keys, in two layouts: one Redis (``REDIS_URL``, ``REDIS_SENTINELS``)
and Redis Cluster (``REDIS_CLUSTER_NODES``).

In a cluster every key of a room must hash to one slot, so that the room's script, the pipeline around it
and its ``WAIT`` run on the one master that holds it: the room's name is the hash tag of each of its keys
(``<prefix>:room:{<room>}``; Redis hashes only what is between the first ``{`` and the ``}`` after it,
and room ids cannot contain braces: ``schemas.commands.ID_PATTERN``). One Redis keeps the names it has
always had (no tags), so that an upgrade leaves the state of rooms in flight where it is; the decision
and what it saves is in docs/high-availability/redis-cluster.md ("Key layout").

Keys that span rooms keep one name in both layouts, each in the slot its own name hashes to (one
master holds it, and a reshard may move it like any key). Why each is fine at scale is said where it is
named below.
"""

from __future__ import annotations

from livekit_signaling.store.target import RedisTarget, check_key_prefix


class RedisKeys:
    """One Redis: ``<prefix>:room:<room>`` (a room's hash) and ``<prefix>:replication-probe`` (written by
    replication barriers), and the keys that span rooms."""

    #: Whether a room's own script can write the indexes of rooms beside the room (one Redis: every key
    #: is on the one master); in a cluster they are in other slots, so the store writes them after it.
    indexes_in_room_script = True

    def __init__(self, prefix: str, *, partitions: int = 1) -> None:
        self.prefix = prefix
        self._partitions = partitions
        #: The rooms with microphone restrictions, one sorted set scored by until when they count. It
        #: changes when a room's restrictions change, and is refreshed at most a few times per room per
        #: ``ROOM_IDLE_SECONDS`` (store/redis.py); read once per metrics scrape. Far below what one
        #: master serves, whatever the number of rooms.
        self.restricted = f"{prefix}:restricted"
        #: The live replicas of the service, one small sorted set (``RedisReplicaRegistry``), written
        #: once per replica per rebalancing interval: no load worth spreading.
        self.replicas = f"{prefix}:replicas"

    def room(self, room: str) -> str:
        return f"{self.prefix}:room:{room}"

    def reconcile(self, partition: int) -> str:
        """The rooms of ``partition`` with something to enforce, for the reconciler (one sorted set per
        partition, the partition count in its name). In a cluster each list sits in the slot of its own
        name, so the lists spread over the masters; each holds only its partition's rooms with standing
        decisions, is read once per reconcile interval by the one replica that holds the partition, and
        is written with those rooms' writes (at most a few times per room per ``ROOM_IDLE_SECONDS``
        unless their decisions change)."""
        return f"{self.prefix}:reconcile:{self._partitions}:{partition}"

    def probe(self, room: str) -> str:
        """What a replication barrier before a read or deletion of ``room`` writes."""
        return f"{self.prefix}:replication-probe"

    def processed(self, message_id: str) -> str:
        """A command's mark in the duplicate window. In a cluster each mark hashes by its own name (a
        message id), so the marks spread evenly over every slot, and none is used with another key."""
        return f"{self.prefix}:msg:{message_id}"


class ClusterKeys(RedisKeys):
    """Redis Cluster: a room's keys carry the room as hash tag, ``<prefix>:room:{<room>}`` and
    ``<prefix>:replication-probe:{<room>}`` (the barrier's ``WAIT`` must run on the master that holds
    the room, so its probe is per room; it expires a minute after the barrier)."""

    indexes_in_room_script = False

    def room(self, room: str) -> str:
        return f"{self.prefix}:room:{{{room}}}"

    def probe(self, room: str) -> str:
        return f"{self.prefix}:replication-probe:{{{room}}}"


def keys_for(target: RedisTarget, prefix: str, *, partitions: int = 1) -> RedisKeys:
    """The layout for ``target``: tagged in a cluster, as always otherwise; ``partitions``: of the
    command queues, one reconcile list each."""
    check_key_prefix(prefix, target)
    layout = ClusterKeys if target.is_cluster else RedisKeys
    return layout(prefix, partitions=partitions)
