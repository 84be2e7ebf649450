"""Redis settings: a URL, Sentinels or a cluster's nodes (never two of them), passwords from files, the
replica requirement's defaults, the key layout and the client each one builds."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import SSLConnection
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ClusterError,
    MasterDownError,
    ReadOnlyError,
    RedisClusterException,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from livekit_signaling.app.settings import SettingsError, load_settings
from livekit_signaling.store.connection import RedisConnection, is_transient
from livekit_signaling.store.target import InvalidRedisTarget, RedisTarget

BASE = {"LIVEKIT_URL": "http://lk:7880", "LIVEKIT_API_KEY": "key", "LIVEKIT_API_SECRET": "very-secret"}
SENTINELS = {"REDIS_SENTINELS": "s1:26379, s2:26380,[fd00::3]:26381", "REDIS_SENTINEL_MASTER": "signaling"}
CLUSTER = {"REDIS_CLUSTER_NODES": "c1:6379,c2:6380"}


def test_sentinels_are_parsed_and_require_one_replica_by_default() -> None:
    settings = load_settings({**BASE, **SENTINELS})
    assert settings.redis_sentinels == (("s1", 26379), ("s2", 26380), ("fd00::3", 26381))
    assert settings.redis_sentinel_master == "signaling"
    assert settings.uses_redis
    assert settings.required_replicas == 1


def test_a_url_requires_no_replica_by_default_and_memory_needs_none() -> None:
    assert load_settings({**BASE, "REDIS_URL": "redis://r:6379/0"}).required_replicas == 0
    memory = load_settings(BASE)
    assert not memory.uses_redis
    assert memory.required_replicas == 0


def test_cluster_nodes_are_parsed_and_require_one_replica_per_shard_by_default() -> None:
    settings = load_settings({**BASE, **CLUSTER})
    assert settings.redis_cluster_nodes == (("c1", 6379), ("c2", 6380))
    assert settings.required_replicas == 1
    assert settings.redis is not None
    assert settings.redis.describe() == "Redis Cluster via c1:6379,c2:6380"


@pytest.mark.parametrize(
    ("environ", "expected"), [(SENTINELS, 0), ({"REDIS_URL": "redis://r/0"}, 2), (CLUSTER, 0)]
)
def test_min_replicas_overrides_the_default(environ: dict[str, str], expected: int) -> None:
    settings = load_settings({**BASE, **environ, "REDIS_MIN_REPLICAS": str(expected)})
    assert settings.required_replicas == expected


@pytest.mark.parametrize(
    ("environ", "both"),
    [
        ({**SENTINELS, "REDIS_URL": "redis://r:6379/0"}, "REDIS_URL and REDIS_SENTINELS"),
        ({**CLUSTER, "REDIS_URL": "redis://r:6379/0"}, "REDIS_URL and REDIS_CLUSTER_NODES"),
        ({**CLUSTER, **SENTINELS}, "REDIS_SENTINELS and REDIS_CLUSTER_NODES"),
    ],
)
def test_two_places_for_redis_are_refused_naming_both(environ: dict[str, str], both: str) -> None:
    with pytest.raises(SettingsError, match=f"^{both} are alternatives: set one of them"):
        load_settings({**BASE, **environ})


@pytest.mark.parametrize("prefix", ["{signaling}", "signaling}", "a{b"])
def test_a_key_prefix_with_braces_is_refused_in_a_cluster_only(prefix: str) -> None:
    with pytest.raises(
        SettingsError, match=r"^REDIS_KEY_PREFIX may not contain \{ or \} with REDIS_CLUSTER_NODES"
    ):
        load_settings({**BASE, **CLUSTER, "REDIS_KEY_PREFIX": prefix})
    assert load_settings({**BASE, **SENTINELS, "REDIS_KEY_PREFIX": prefix}).redis_key_prefix == prefix


@pytest.mark.parametrize("value", ["s1", "s1:", ":26379", "s1:port", "s1:70000", "s1:26379,"])
def test_a_bad_sentinel_address_is_named(value: str) -> None:
    with pytest.raises(SettingsError, match=f"^REDIS_SENTINELS: '{value}' is invalid: expected host:port"):
        load_settings({**BASE, "REDIS_SENTINELS": value})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("REDIS_MIN_REPLICAS", "1"),
        ("REDIS_USERNAME", "signaling"),
        ("REDIS_PASSWORD", "pw"),
        ("REDIS_SENTINEL_USERNAME", "sentinel-peer"),
        ("REDIS_SENTINEL_PASSWORD", "pw"),
    ],
)
def test_redis_options_without_redis_are_refused(name: str, value: str) -> None:
    with pytest.raises(
        SettingsError, match=f"^{name} needs REDIS_URL, REDIS_SENTINELS or REDIS_CLUSTER_NODES"
    ):
        load_settings({**BASE, name: value})


@pytest.mark.parametrize("name", ["REDIS_SENTINEL_USERNAME", "REDIS_SENTINEL_PASSWORD"])
@pytest.mark.parametrize("where", [{"REDIS_URL": "redis://r/0"}, CLUSTER])
def test_sentinel_credentials_need_sentinels(name: str, where: dict[str, str]) -> None:
    with pytest.raises(SettingsError, match=f"^{name} needs REDIS_SENTINELS"):
        load_settings({**BASE, **where, name: "x"})


def test_a_username_is_given_once() -> None:
    environ = {**BASE, "REDIS_URL": "redis://in-url:pw@r/0", "REDIS_USERNAME": "separate"}
    with pytest.raises(SettingsError, match=r"^REDIS_USERNAME is set and REDIS_URL names a user too"):
        load_settings(environ)


async def test_a_username_beside_a_url_reaches_the_connections() -> None:
    settings = load_settings({**BASE, "REDIS_URL": "redis://r/0", "REDIS_USERNAME": "signaling"})
    connection = RedisConnection(settings.redis, timeout_seconds=3.0)
    try:
        assert connection.client.connection_pool.connection_kwargs["username"] == "signaling"
    finally:
        await connection.close()


def test_a_password_is_given_once() -> None:
    environ = {**BASE, "REDIS_URL": "redis://:in-url@r/0", "REDIS_PASSWORD": "separate"}
    with pytest.raises(SettingsError) as refused:
        load_settings(environ)
    assert "in-url" not in str(refused.value)
    assert "separate" not in str(refused.value)


@pytest.mark.parametrize(
    ("name", "value"), [("REDIS_MIN_REPLICAS", "-1"), ("REDIS_WAIT_TIMEOUT_SECONDS", "0")]
)
def test_invalid_replication_settings_are_named(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=f"^{name}: '{value}' is invalid"):
        load_settings({**BASE, **SENTINELS, name: value})


def test_passwords_from_files_are_never_shown(tmp_path: Path) -> None:
    (tmp_path / "redis").write_text("redis-secret\n")
    (tmp_path / "sentinel").write_text("sentinel-secret\n")
    settings = load_settings(
        {
            **BASE,
            **SENTINELS,
            "REDIS_PASSWORD_FILE": str(tmp_path / "redis"),
            "REDIS_SENTINEL_PASSWORD_FILE": str(tmp_path / "sentinel"),
        }
    )
    assert settings.redis_password == "redis-secret"
    assert settings.redis_sentinel_password == "sentinel-secret"
    assert "redis-secret" not in repr(settings)
    assert "sentinel-secret" not in repr(settings)
    target = settings.redis
    assert target.describe() == "Sentinel master 'signaling' via s1:26379,s2:26380,fd00::3:26381"


async def test_sentinel_settings_build_a_sentinel_managed_master_client() -> None:
    settings = load_settings(
        {
            **BASE,
            **SENTINELS,
            "REDIS_USERNAME": "signaling",
            "REDIS_PASSWORD": "pw",
            "REDIS_SENTINEL_USERNAME": "sentinel-peer",
            "REDIS_SENTINEL_PASSWORD": "spw",
        }
    )
    connection = RedisConnection(settings.redis, timeout_seconds=3.0)
    try:
        pool = connection.client.connection_pool
        assert isinstance(pool, SentinelConnectionPool)
        assert pool.is_master
        assert pool.service_name == "signaling"
        assert pool.connection_kwargs["username"] == "signaling"
        assert pool.connection_kwargs["password"] == "pw"
        assert pool.connection_kwargs["socket_timeout"] == 3.0
        sentinels = pool.sentinel_manager.sentinels
        assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [26379, 26380, 26381]
        assert {s.connection_pool.connection_kwargs["password"] for s in sentinels} == {"spw"}
        assert {s.connection_pool.connection_kwargs["username"] for s in sentinels} == {"sentinel-peer"}
    finally:
        await connection.close()


def test_a_target_is_a_url_or_sentinels_or_a_cluster() -> None:
    with pytest.raises(InvalidRedisTarget, match="one of REDIS_URL, REDIS_SENTINELS, REDIS_CLUSTER_NODES"):
        RedisTarget()
    with pytest.raises(InvalidRedisTarget, match="REDIS_URL and REDIS_SENTINELS are alternatives"):
        RedisTarget(url="redis://r/0", sentinels=(("s", 1),))


def _caused(error: Exception, cause: Exception) -> Exception:
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (RedisConnectionError("gone"), True),
        (ReadOnlyError("You can't write against a read only replica."), True),
        (MasterDownError("Link with MASTER is down and replica-serve-stale-data is set to 'no'."), True),
        (ResponseError("NOREPLICAS Not enough good replicas to write."), True),
        (ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), False),
        (ClusterDownError("CLUSTERDOWN The cluster is down"), True),
        (TryAgainError("TRYAGAIN Multiple keys request during rehashing of slot"), True),
        (ClusterError("TTL exhausted."), True),
        (SlotNotCoveredError('Slot "12" is not covered by the cluster.'), True),
        (_caused(RedisClusterException("Redis Cluster cannot be connected"), RedisConnectionError()), True),
        (RedisClusterException("Cluster mode is not enabled on this node"), False),
        (AskError("1234 127.0.0.1:7001"), False),  # followed, never raised to the store
    ],
)
def test_which_redis_errors_are_transient(error: Exception, transient: bool) -> None:
    assert is_transient(error) is transient


CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"


async def test_tls_with_sentinels_reaches_the_sentinels_and_the_master_connections(tmp_path: Path) -> None:
    """``REDIS_TLS`` and the CA (from a mounted file): SSL connections to the Sentinels and the master, with
    the CA's PEM (tests/integration/test_tls.py connects through them for real)."""
    (tmp_path / "ca.pem").write_text(CA_PEM + "\n")
    settings = load_settings(
        {**BASE, **SENTINELS, "REDIS_TLS": "true", "REDIS_TLS_CA_FILE": str(tmp_path / "ca.pem")}
    )
    assert settings.redis_tls_ca == CA_PEM + "\n"
    target = settings.redis
    assert target.describe().endswith("(TLS)")
    connection = RedisConnection(target, timeout_seconds=3.0)
    try:
        pool = connection.client.connection_pool
        assert isinstance(pool, SentinelConnectionPool)
        assert issubclass(pool.connection_class, SSLConnection)
        assert pool.connection_kwargs["ssl_ca_data"] == CA_PEM + "\n"
        for sentinel in pool.sentinel_manager.sentinels:
            assert issubclass(sentinel.connection_pool.connection_class, SSLConnection)
            assert sentinel.connection_pool.connection_kwargs["ssl_ca_data"] == CA_PEM + "\n"
    finally:
        await connection.close()


async def test_a_ca_beside_a_rediss_url_reaches_its_connections() -> None:
    settings = load_settings({**BASE, "REDIS_URL": "rediss://r:6380/0", "REDIS_TLS_CA": CA_PEM})
    connection = RedisConnection(settings.redis, timeout_seconds=3.0)
    try:
        pool = connection.client.connection_pool
        assert issubclass(pool.connection_class, SSLConnection)
        assert pool.connection_kwargs["ssl_ca_data"] == CA_PEM + "\n"
    finally:
        await connection.close()


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"REDIS_URL": "rediss://r/0", "REDIS_TLS": "true"},
            "REDIS_TLS is for REDIS_SENTINELS or REDIS_CLUSTER_NODES",
        ),
        ({"REDIS_TLS": "true"}, "REDIS_TLS needs REDIS_SENTINELS or REDIS_CLUSTER_NODES"),
        ({"REDIS_URL": "redis://r/0", "REDIS_TLS_CA": CA_PEM}, "REDIS_TLS_CA needs a rediss:// REDIS_URL"),
        ({**SENTINELS, "REDIS_TLS_CA": CA_PEM}, "REDIS_TLS_CA needs REDIS_TLS=true with REDIS_SENTINELS"),
        ({**CLUSTER, "REDIS_TLS_CA": CA_PEM}, "REDIS_TLS_CA needs REDIS_TLS=true with REDIS_CLUSTER_NODES"),
        ({"REDIS_TLS_CA": CA_PEM}, "REDIS_TLS_CA needs REDIS_URL, REDIS_SENTINELS or REDIS_CLUSTER_NODES"),
        ({**SENTINELS, "REDIS_TLS": "true", "REDIS_TLS_CA": "/etc/ca.pem"}, "REDIS_TLS_CA: '/etc/ca.pem' is"),
    ],
)
def test_tls_settings_that_do_not_fit_are_named(environ: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=f"^{message}"):
        load_settings({**BASE, **environ})


async def test_cluster_settings_build_a_cluster_client_with_the_credentials_and_tls(tmp_path: Path) -> None:
    """The same ``REDIS_USERNAME``, ``REDIS_PASSWORD``, ``REDIS_TLS`` and CA as with Sentinel reach every
    node's connections (tests/ha/test_redis_cluster.py connects through them for real)."""
    (tmp_path / "ca.pem").write_text(CA_PEM + "\n")
    settings = load_settings(
        {
            **BASE,
            **CLUSTER,
            "REDIS_USERNAME": "signaling",
            "REDIS_PASSWORD": "pw",
            "REDIS_TLS": "true",
            "REDIS_TLS_CA_FILE": str(tmp_path / "ca.pem"),
        }
    )
    assert settings.redis is not None
    assert settings.redis.describe() == "Redis Cluster via c1:6379,c2:6380 (TLS)"
    connection = RedisConnection(settings.redis, timeout_seconds=3.0)
    try:
        client = connection.client
        assert isinstance(client, RedisCluster)
        assert [(node.host, node.port) for node in client.nodes_manager.startup_nodes.values()] == [
            ("c1", 6379),
            ("c2", 6380),
        ]
        for node in client.nodes_manager.startup_nodes.values():
            assert issubclass(node.connection_class, SSLConnection)
            assert node.connection_kwargs["username"] == "signaling"
            assert node.connection_kwargs["password"] == "pw"
            assert node.connection_kwargs["ssl_ca_data"] == CA_PEM + "\n"
            assert node.connection_kwargs["socket_timeout"] == 3.0
    finally:
        await connection.close()
