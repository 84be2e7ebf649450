"""Where the shared state lives, and every rule about the ``REDIS_*`` settings that only make sense
together, checked in this one place (the messages name the settings, never a value)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import urlsplit


class InvalidRedisTarget(ValueError):
    """The ``REDIS_*`` settings contradict each other; the message names them."""


#: Each field of ``RedisTarget`` as the setting that gives it.
SETTING_NAMES = {
    "url": "REDIS_URL",
    "sentinels": "REDIS_SENTINELS",
    "cluster_nodes": "REDIS_CLUSTER_NODES",
    "sentinel_master": "REDIS_SENTINEL_MASTER",
    "username": "REDIS_USERNAME",
    "password": "REDIS_PASSWORD",
    "sentinel_username": "REDIS_SENTINEL_USERNAME",
    "sentinel_password": "REDIS_SENTINEL_PASSWORD",
    "tls": "REDIS_TLS",
    "tls_ca": "REDIS_TLS_CA",
    "min_replicas": "REDIS_MIN_REPLICAS",
}
#: Settings that mean something only with Sentinels.
_SENTINEL_ONLY = ("sentinel_username", "sentinel_password")
#: The ways to say where Redis is, of which exactly one is set.
_WHERE = ("url", "sentinels", "cluster_nodes")
#: Fields that say nothing on their own (they have defaults).
_DEFAULTED = ("sentinel_master",)


@dataclass(frozen=True, kw_only=True)
class RedisTarget:
    """Where Redis is: ``url``, or ``sentinels`` (host, port) monitoring ``sentinel_master``, or the
    seed nodes of a Redis Cluster (``cluster_nodes``)."""

    url: str | None = None
    sentinels: tuple[tuple[str, int], ...] = ()
    sentinel_master: str = "mymaster"
    #: Any nodes of a Redis Cluster (host, port): the client learns the rest, and the slots, from them.
    cluster_nodes: tuple[tuple[str, int], ...] = ()
    #: An ACL user (Redis 6+) for the data nodes; None = the ``default`` user.
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    #: TLS to the Sentinels and to the nodes they name, or to every node of a cluster (a URL says it by
    #: its scheme, ``rediss://``).
    tls: bool = False
    #: PEM of the CA the servers' certificates must be signed by (None = the system CAs), for the
    #: Sentinels, cluster nodes and nodes with ``tls``, or for a ``rediss://`` URL (beside any
    #: ``ssl_ca_certs`` in it).
    tls_ca: str | None = None
    #: Replicas that must acknowledge a write before it counts (``WAIT``); None = the default below.
    min_replicas: int | None = None

    def __post_init__(self) -> None:
        _check(self)

    @property
    def is_cluster(self) -> bool:
        return bool(self.cluster_nodes)

    @property
    def required_replicas(self) -> int:
        """``min_replicas``, or its default: with Sentinel, and in a cluster (per shard), there are
        replicas to fail over to, and an acknowledged write must survive that; a plain URL may well be
        a Redis without any."""
        if self.min_replicas is not None:
            return self.min_replicas
        return 1 if self.sentinels or self.cluster_nodes else 0

    @property
    def tls_kwargs(self) -> dict[str, Any]:
        """redis-py's connection arguments for TLS (the server's certificate and host are checked)."""
        kwargs: dict[str, Any] = {"ssl": True} if self.tls else {}
        if self.tls_ca is not None:
            kwargs["ssl_ca_data"] = self.tls_ca
        return kwargs

    def describe(self) -> str:
        """For logs: never the URL (it may carry a password)."""
        tls = " (TLS)" if self.tls else ""
        if self.sentinels:
            return f"Sentinel master {self.sentinel_master!r} via {_addresses(self.sentinels)}{tls}"
        if self.cluster_nodes:
            return f"Redis Cluster via {_addresses(self.cluster_nodes)}{tls}"
        return "Redis at REDIS_URL"


def redis_target(**settings: Any) -> RedisTarget | None:
    """The target the ``REDIS_*`` settings describe (keyword names as ``RedisTarget``'s fields), or
    None when none that needs one is set: the state then lives in process memory."""
    needs_redis = any(
        value not in (None, (), False) for name, value in settings.items() if name not in _DEFAULTED
    )
    return RedisTarget(**settings) if needs_redis else None


def check_key_prefix(prefix: str, target: RedisTarget | None) -> None:
    """In a cluster the room's name is each of its keys' hash tag (``{<room>}``); Redis hashes the first
    ``{...}`` of a key, so a brace in the prefix would put the tag somewhere else."""
    if target is not None and target.cluster_nodes and ("{" in prefix or "}" in prefix):
        raise InvalidRedisTarget(
            "REDIS_KEY_PREFIX may not contain { or } with REDIS_CLUSTER_NODES: each room's keys carry the "
            "room as their hash tag, and a brace in the prefix would take its place"
        )


def _addresses(nodes: tuple[tuple[str, int], ...]) -> str:
    return ",".join(f"{host}:{port}" for host, port in nodes)


def _check(target: RedisTarget) -> None:
    given = [name for name in _WHERE if getattr(target, name)]
    if len(given) > 1:
        first, second = (SETTING_NAMES[name] for name in given[:2])
        raise InvalidRedisTarget(f"{first} and {second} are alternatives: set one of them")
    if not given:
        if target.tls:
            raise InvalidRedisTarget("REDIS_TLS needs REDIS_SENTINELS or REDIS_CLUSTER_NODES")
        for item in fields(target):
            if item.name not in _DEFAULTED and getattr(target, item.name) not in (None, (), False):
                raise InvalidRedisTarget(
                    f"{SETTING_NAMES[item.name]} needs REDIS_URL, REDIS_SENTINELS or REDIS_CLUSTER_NODES"
                )
        raise InvalidRedisTarget("a Redis target is one of REDIS_URL, REDIS_SENTINELS, REDIS_CLUSTER_NODES")
    _check_tls(target)
    for name in _SENTINEL_ONLY:
        if getattr(target, name) and not target.sentinels:
            raise InvalidRedisTarget(f"{SETTING_NAMES[name]} needs REDIS_SENTINELS")
    # redis-py lets the URL's credentials win over separate ones: refuse the ambiguity instead.
    in_url = urlsplit(target.url) if target.url else None
    if in_url and target.password and in_url.password:
        raise InvalidRedisTarget("REDIS_PASSWORD is set and REDIS_URL carries a password too: give it once")
    if in_url and target.username and in_url.username:
        raise InvalidRedisTarget("REDIS_USERNAME is set and REDIS_URL names a user too: give it once")


def _check_tls(target: RedisTarget) -> None:
    """TLS is said by a ``REDIS_URL``'s scheme, or by ``REDIS_TLS`` for Sentinels and cluster nodes; a CA
    needs either."""
    if target.tls and target.url:
        raise InvalidRedisTarget(
            "REDIS_TLS is for REDIS_SENTINELS or REDIS_CLUSTER_NODES: a REDIS_URL says TLS by its scheme, "
            "rediss://"
        )
    if not target.tls_ca:
        return
    if target.url and urlsplit(target.url).scheme != "rediss":
        raise InvalidRedisTarget("REDIS_TLS_CA needs a rediss:// REDIS_URL (TLS)")
    for name in ("sentinels", "cluster_nodes"):
        if getattr(target, name) and not target.tls:
            raise InvalidRedisTarget(f"REDIS_TLS_CA needs REDIS_TLS=true with {SETTING_NAMES[name]}")
