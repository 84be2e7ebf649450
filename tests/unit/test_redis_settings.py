"""Redis settings: a URL or Sentinels (never both), passwords from files, the replica requirement's
defaults, and the client each one builds."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.asyncio.connection import SSLConnection
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MasterDownError, ReadOnlyError, ResponseError

from livekit_signaling.app.settings import SettingsError, load_settings
from livekit_signaling.store.connection import RedisConnection, is_transient
from livekit_signaling.store.target import InvalidRedisTarget, RedisTarget

BASE = {"LIVEKIT_URL": "http://lk:7880", "LIVEKIT_API_KEY": "key", "LIVEKIT_API_SECRET": "very-secret"}
SENTINELS = {"REDIS_SENTINELS": "s1:26379, s2:26380,[fd00::3]:26381", "REDIS_SENTINEL_MASTER": "signaling"}


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


@pytest.mark.parametrize(("environ", "expected"), [(SENTINELS, 0), ({"REDIS_URL": "redis://r/0"}, 2)])
def test_min_replicas_overrides_the_default(environ: dict[str, str], expected: int) -> None:
    settings = load_settings({**BASE, **environ, "REDIS_MIN_REPLICAS": str(expected)})
    assert settings.required_replicas == expected


def test_url_and_sentinels_together_are_refused() -> None:
    with pytest.raises(SettingsError, match=r"^REDIS_URL and REDIS_SENTINELS are alternatives"):
        load_settings({**BASE, **SENTINELS, "REDIS_URL": "redis://r:6379/0"})


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
    with pytest.raises(SettingsError, match=f"^{name} needs REDIS_URL or REDIS_SENTINELS"):
        load_settings({**BASE, name: value})


@pytest.mark.parametrize("name", ["REDIS_SENTINEL_USERNAME", "REDIS_SENTINEL_PASSWORD"])
def test_sentinel_credentials_need_sentinels(name: str) -> None:
    with pytest.raises(SettingsError, match=f"^{name} needs REDIS_SENTINELS"):
        load_settings({**BASE, "REDIS_URL": "redis://r/0", name: "x"})


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


def test_a_target_is_a_url_or_sentinels() -> None:
    with pytest.raises(InvalidRedisTarget, match="either REDIS_URL or REDIS_SENTINELS"):
        RedisTarget()
    with pytest.raises(InvalidRedisTarget, match="REDIS_URL and REDIS_SENTINELS are alternatives"):
        RedisTarget(url="redis://r/0", sentinels=(("s", 1),))


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (RedisConnectionError("gone"), True),
        (ReadOnlyError("You can't write against a read only replica."), True),
        (MasterDownError("Link with MASTER is down and replica-serve-stale-data is set to 'no'."), True),
        (ResponseError("NOREPLICAS Not enough good replicas to write."), True),
        (ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), False),
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
        ({"REDIS_URL": "rediss://r/0", "REDIS_TLS": "true"}, "REDIS_TLS is for REDIS_SENTINELS"),
        ({"REDIS_TLS": "true"}, "REDIS_TLS needs REDIS_SENTINELS"),
        ({"REDIS_URL": "redis://r/0", "REDIS_TLS_CA": CA_PEM}, "REDIS_TLS_CA needs a rediss:// REDIS_URL"),
        ({**SENTINELS, "REDIS_TLS_CA": CA_PEM}, "REDIS_TLS_CA needs REDIS_TLS=true"),
        ({"REDIS_TLS_CA": CA_PEM}, "REDIS_TLS_CA needs REDIS_URL or REDIS_SENTINELS"),
        ({**SENTINELS, "REDIS_TLS": "true", "REDIS_TLS_CA": "/etc/ca.pem"}, "REDIS_TLS_CA: '/etc/ca.pem' is"),
    ],
)
def test_tls_settings_that_do_not_fit_are_named(environ: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=f"^{message}"):
        load_settings({**BASE, **environ})
