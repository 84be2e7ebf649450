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


@dataclass(frozen=True, kw_only=True)
class RedisTarget:
    """Where Redis is: ``url``, or ``sentinels`` (host, port) monitoring ``sentinel_master``."""

    url: str | None = None
    sentinels: tuple[tuple[str, int], ...] = ()
    sentinel_master: str = "mymaster"
    #: An ACL user (Redis 6+) for the data nodes; None = the ``default`` user.
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    #: TLS to the Sentinels and to the nodes they name (a URL says it by its scheme, ``rediss://``).
    tls: bool = False
    #: PEM of the CA the servers' certificates must be signed by (None = the system CAs), for the
    #: Sentinels and nodes with ``tls``, or for a ``rediss://`` URL (beside any ``ssl_ca_certs`` in it).
    tls_ca: str | None = None
    #: Replicas that must acknowledge a write before it counts (``WAIT``); None = the default below.
    min_replicas: int | None = None

    def __post_init__(self) -> None:
        _check(self)

    @property
    def required_replicas(self) -> int:
        """``min_replicas``, or its default: with Sentinel there are replicas to fail over to, and an
        acknowledged write must survive that; a plain URL may well be a Redis without any."""
        if self.min_replicas is not None:
            return self.min_replicas
        return 1 if self.sentinels else 0

    @property
    def tls_kwargs(self) -> dict[str, Any]:
        """redis-py's connection arguments for TLS (the server's certificate and host are checked)."""
        kwargs: dict[str, Any] = {"ssl": True} if self.tls else {}
        if self.tls_ca is not None:
            kwargs["ssl_ca_data"] = self.tls_ca
        return kwargs

    def describe(self) -> str:
        """For logs: never the URL (it may carry a password)."""
        if self.sentinels:
            addresses = ",".join(f"{host}:{port}" for host, port in self.sentinels)
            tls = " (TLS)" if self.tls else ""
            return f"Sentinel master {self.sentinel_master!r} via {addresses}{tls}"
        return "Redis at REDIS_URL"


def redis_target(**settings: Any) -> RedisTarget | None:
    """The target the ``REDIS_*`` settings describe (keyword names as ``RedisTarget``'s fields), or
    None when none that needs one is set: the state then lives in process memory."""
    needs_redis = any(
        value not in (None, (), False) for name, value in settings.items() if name != "sentinel_master"
    )
    return RedisTarget(**settings) if needs_redis else None


def _check(target: RedisTarget) -> None:
    if target.url and target.sentinels:
        raise InvalidRedisTarget("REDIS_URL and REDIS_SENTINELS are alternatives: set one of them")
    if not (target.url or target.sentinels):
        if target.tls:
            raise InvalidRedisTarget("REDIS_TLS needs REDIS_SENTINELS")
        for item in fields(target):
            if item.name != "sentinel_master" and getattr(target, item.name) not in (None, (), False):
                raise InvalidRedisTarget(f"{SETTING_NAMES[item.name]} needs REDIS_URL or REDIS_SENTINELS")
        raise InvalidRedisTarget("a Redis target is either REDIS_URL or REDIS_SENTINELS")
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
    """TLS is said by a ``REDIS_URL``'s scheme, or by ``REDIS_TLS`` for Sentinels; a CA needs either."""
    if target.tls and target.url:
        raise InvalidRedisTarget(
            "REDIS_TLS is for REDIS_SENTINELS: a REDIS_URL says TLS by its scheme, rediss://"
        )
    if not target.tls_ca:
        return
    if target.url and urlsplit(target.url).scheme != "rediss":
        raise InvalidRedisTarget("REDIS_TLS_CA needs a rediss:// REDIS_URL (TLS)")
    if target.sentinels and not target.tls:
        raise InvalidRedisTarget("REDIS_TLS_CA needs REDIS_TLS=true with REDIS_SENTINELS")
