"""TLS to RabbitMQ (``amqps://``) and to Redis (``rediss://``), against real servers with throw-away
certificates (testkit/tls.py): what docs/operations/tls.md promises.

The RabbitMQ tests start a node of their own with a TLS listener (testkit/rabbit_cluster.py,
``tls=``; ``slow``, and root or the ``rabbitmq`` user, as tests/ha). The Redis tests start a
``redis-server`` of their own that listens with TLS only (``port 0``), so nothing but TLS can reach it.
Every URL the service or a client is given names the TLS port; the plain port is never in it.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import aio_pika
import pytest
import redis
import redis.asyncio

from livekit_signaling.app.settings import load_settings
from livekit_signaling.domain.errors import StoreUnavailable
from livekit_signaling.domain.state import RosterEntry
from livekit_signaling.schemas.routing import participant_routing_key
from livekit_signaling.store.redis import RedisStateStore
from testkit.amqp import SignalingClient, delete_topology
from testkit.processes import EmulatorProcess, Names, ServiceProcess, cli_send
from testkit.rabbit_cluster import RabbitCluster, RabbitNode
from testkit.redis_sentinel import RedisNode, RedisSentinelGroup
from testkit.tls import TlsFiles, throwaway_certificates
from tests.integration.refusals import refusal_errors, wait_refused

PARTITIONS = 2


# -- certificates and servers ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls() -> Iterator[TlsFiles]:
    with throwaway_certificates("test") as files:
        yield files


@pytest.fixture(scope="module")
def other_ca() -> Iterator[TlsFiles]:
    """A CA that signed nothing the servers present."""
    with throwaway_certificates("other") as files:
        yield files


@pytest.fixture(scope="module")
def tls_node(tls: TlsFiles) -> Iterator[RabbitNode]:
    """One RabbitMQ node with a TLS listener beside its plain one (which only the helpers' checks use)."""
    with RabbitCluster(size=1, tls=tls) as cluster:
        yield cluster.nodes["a"]


@pytest.fixture(scope="module")
def tls_redis(tls: TlsFiles) -> Iterator[RedisSentinelGroup]:
    """A lone ``redis-server`` (no replica, no Sentinel) that listens with TLS only."""
    with RedisSentinelGroup(replicas=0, sentinels=0, tls=tls) as group:
        yield group


def _master(group: RedisSentinelGroup) -> RedisNode:
    return group.data_nodes[0]


def _connections(node: RabbitNode) -> list[dict[str, object]]:
    """The node's client connections: server port, ``ssl``, and the client's connection name."""
    result = subprocess.run(
        ["rabbitmqctl", "-n", node.name, "list_connections", "port", "ssl", "client_properties",
         "--formatter", "json", "-q"],
        env=node.environment(), capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    rows: list[dict[str, object]] = json.loads(result.stdout.decode() or "[]")
    return rows


def _connection_name(row: dict[str, object]) -> str:
    properties = row.get("client_properties") or []
    assert isinstance(properties, list)
    for item in properties:
        if isinstance(item, list) and item and item[0] == "connection_name":
            return str(item[-1])
    return ""


# -- RabbitMQ -------------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_service_answers_a_join_over_amqps(
    tls_node: RabbitNode, emulator_process: EmulatorProcess
) -> None:
    """The real service with ``AMQP_URL=amqps://…:<TLS port>/?cafile=<CA>``, a client over TLS too: a join
    is answered with ``join_success``, and RabbitMQ itself says both connections are TLS ones on the TLS
    port (fails if the service stopped passing the CA, or verified nothing: see the next test)."""
    assert tls_node.tls_port != tls_node.amqp_port
    url = tls_node.tls_url()
    names = Names()
    service = ServiceProcess(names, emulator_process.url, partitions=PARTITIONS, env={"AMQP_URL": url})
    service.start(timeout=30)
    try:
        assert service.status()["amqp_node"] == f"127.0.0.1:{tls_node.tls_port}/"
        async with SignalingClient(names, url=url, name="tls-test-client") as client:
            event = await client.reply(f"room-{uuid.uuid4().hex[:8]}", "alice", {"action": "join"})
            assert event.message == "join_success", event.body
            connections = await asyncio.to_thread(_connections, tls_node)
        by_name = {_connection_name(row): row for row in connections}
        service_rows = [row for name, row in by_name.items() if name.startswith("livekit-signaling@")]
        assert service_rows, connections
        for row in [*service_rows, by_name["tls-test-client"]]:
            assert row["ssl"] is True and row["port"] == tls_node.tls_port, row
        assert "password" not in service.logs() and "guest:guest" not in service.logs()
    finally:
        service.stop()


@pytest.mark.slow
def test_a_certificate_of_another_ca_is_refused_with_the_fix(
    tls_node: RabbitNode, other_ca: TlsFiles, emulator_process: EmulatorProcess
) -> None:
    """``cafile`` names a CA that did not sign the node's certificate: the service does not connect, and
    says so once, as a refusal with its fix (``/readyz``, one error line, the refused metric), never as
    "not reachable". Fails if verification were off (it would connect) or the cause went unexplained."""
    service = ServiceProcess(
        Names(), emulator_process.url, partitions=PARTITIONS, env={"AMQP_URL": tls_node.tls_url(other_ca.ca)}
    )
    service.start(wait_ready=False)
    try:
        body = wait_refused(service, timeout=30)
        # RabbitMQ sends its CA along (ssl_options.cacertfile), hence OpenSSL's words.
        assert "TLS certificate was not accepted: self-signed certificate in certificate chain" in body, body
        assert "fix: check the CA in AMQP_URL's cafile" in body
        time.sleep(3)  # several retries: the cause is still said once
        errors = refusal_errors(service)
        assert len(errors) == 1, errors
        assert "RabbitMQ refused the service" in errors[0] and "cafile" in errors[0]
        assert service.metric("livekit_signaling_amqp_refused") == 1
        assert not service.is_ready()
    finally:
        service.stop()


@pytest.mark.slow
async def test_a_client_with_another_ca_does_not_connect(tls_node: RabbitNode, other_ca: TlsFiles) -> None:
    """The test client's own path (aio-pika's URL query), so that the passing tests above are not a
    client that verifies nothing."""
    with pytest.raises(aio_pika.exceptions.AMQPConnectionError) as raised:
        await aio_pika.connect(tls_node.tls_url(other_ca.ca), timeout=10)
    assert isinstance(raised.value.__cause__, ssl.SSLCertVerificationError)


@pytest.mark.slow
def test_operator_cli_send_and_watch_over_amqps(
    tls_node: RabbitNode, emulator_process: EmulatorProcess
) -> None:
    """``livekit-signaling send`` and ``watch`` with an ``amqps://`` AMQP_URL: the answer to a join is
    printed by both."""
    names = Names()
    service = ServiceProcess(
        names, emulator_process.url, partitions=PARTITIONS, env={"AMQP_URL": tls_node.tls_url()}
    )
    service.start(timeout=30)
    room = f"room-{uuid.uuid4().hex[:8]}"
    env = {**service.env, "SIGNALING_HTTP_PORT": "0"}
    watcher = subprocess.Popen(
        [sys.executable, "-m", "livekit_signaling", "watch", "--room", room],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        time.sleep(2)  # the watcher's queue bound before the command goes out
        routing_key, answer = cli_send(env, room, "operator", {"action": "join"}, role="moderator")
        assert routing_key == participant_routing_key(room, "operator")
        assert answer["payload"]["message"] == "join_success"
    finally:
        watcher.terminate()
        out, err = watcher.communicate(timeout=20)
        service.stop()
    assert participant_routing_key(room, "operator") in out.decode(), err.decode()[-2000:]


# -- Redis ----------------------------------------------------------------------------------------------


async def test_store_writes_and_reads_over_rediss(tls_redis: RedisSentinelGroup, other_ca: TlsFiles) -> None:
    """``RedisStateStore`` with ``rediss://…?ssl_ca_certs=<CA>`` (redis-py's URL query) against a Redis
    that listens with TLS only: a room written and read back. The same port over ``redis://`` and
    ``rediss://`` with another CA fail, so the store really spoke TLS and really verified the server."""
    url = tls_redis.url(_master(tls_redis))
    assert url.startswith("rediss://") and "ssl_ca_certs=" in url
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    store = RedisStateStore(url, prefix=prefix, dedup_window_seconds=60, room_idle_seconds=600)
    try:
        state = await store.load("room", ["alice"])
        state.participants["alice"] = RosterEntry(role="moderator", kind="user")
        await store.save_entry("room", state, "alice")
        again = await store.load("room", ["alice"])
        assert again.participants["alice"] == state.participants["alice"]
        assert again.version == state.version
    finally:
        await store.close()

    plain = url.replace("rediss://", "redis://").partition("?")[0]
    with redis.Redis.from_url(plain, socket_timeout=2) as client, pytest.raises(redis.ConnectionError):
        client.ping()
    wrong_ca = url.replace(str(tls_redis.tls.ca if tls_redis.tls else ""), str(other_ca.ca))
    stranger = RedisStateStore(wrong_ca, prefix=prefix, dedup_window_seconds=60, room_idle_seconds=600)
    try:
        with pytest.raises(Exception) as raised:  # noqa: PT011 - the cause is checked below
            await stranger.load("room", ["alice"])
        chain: list[BaseException] = []
        seen: BaseException | None = raised.value
        while seen is not None and len(chain) < 5:
            chain.append(seen)
            seen = seen.__cause__ or seen.__context__
        assert any(isinstance(error, ssl.SSLCertVerificationError) for error in chain), chain
        # The store's failure, as the command processor logs it, names the setting to fix.
        assert isinstance(raised.value, StoreUnavailable)
        assert "CERTIFICATE_VERIFY_FAILED" in str(raised.value) and "REDIS_TLS_CA" in str(raised.value)
    finally:
        await stranger.close()


async def _join_through_the_service(
    emulator_process: EmulatorProcess, env: dict[str, str]
) -> tuple[str, str]:
    """The real service with ``env`` (on the shared broker) answers alice's join; then it is stopped.
    The Redis key of the room it joined and the service's log."""
    names = Names()
    service = ServiceProcess(names, emulator_process.url, partitions=1, env=env)
    service.start(timeout=30)
    room = f"room-{uuid.uuid4().hex[:8]}"
    try:
        async with SignalingClient(names) as client:
            try:
                # A join's state write waits for a replica's acknowledgement (REDIS_MIN_REPLICAS); on a
                # loaded CI machine, TLS handshakes to the Sentinels and the master come first.
                event = await client.reply(room, "alice", {"action": "join"}, timeout=30)
            except AssertionError as error:
                raise AssertionError(f"{error}; the service's log:\n{service.logs()[-4000:]}") from None
            assert event.message == "join_success", event.body
    finally:
        service.stop()
        await delete_topology(names, 1)
    return f"{names.redis_prefix}:room:{room}", service.logs()


async def test_service_keeps_its_state_in_tls_redis(
    tls_redis: RedisSentinelGroup, emulator_process: EmulatorProcess
) -> None:
    """The real service with ``REDIS_URL=rediss://…`` (on the shared broker): a join answered, and the room
    it wrote is in the TLS-only Redis."""
    url = tls_redis.url(_master(tls_redis))
    key, _log = await _join_through_the_service(emulator_process, {"REDIS_URL": url})
    async with redis.asyncio.Redis.from_url(url) as direct:
        assert await direct.hexists(key, "alice")


# -- Redis Sentinel -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_sentinels(tls: TlsFiles) -> Iterator[RedisSentinelGroup]:
    """A master, a replica and three Sentinels, every one listening with TLS only; replication and the
    Sentinels' own links over TLS too (``tls-replication yes``)."""
    with RedisSentinelGroup(tls=tls) as group:
        yield group


async def test_store_through_tls_sentinels_writes_replicated_state_and_follows_a_fail_over(
    tls_sentinels: RedisSentinelGroup, tls: TlsFiles
) -> None:
    """``RedisStateStore`` with Sentinels and TLS (``REDIS_TLS``, the CA as PEM): the master is found
    through the Sentinels, a write counts once the replica acknowledged it (``WAIT 1``: replication
    over TLS works), after the master is killed the store reaches the new one, over TLS again, and the
    old one returns as a replica that acknowledges writes. Fails if the Sentinels or the master were
    reached without TLS (every process listens with TLS only) or without the CA (a self-made one)."""
    group = tls_sentinels
    settings = load_settings(
        {
            "LIVEKIT_URL": "http://unused",
            "LIVEKIT_API_KEY": "unused",
            "LIVEKIT_API_SECRET": "unused",
            **group.service_env(),
        }
    )
    assert settings.redis_tls and settings.redis_tls_ca == tls.ca.read_text()
    store = RedisStateStore(
        settings.redis,
        prefix=f"test-{uuid.uuid4().hex[:8]}",
        dedup_window_seconds=60,
        room_idle_seconds=600,
        min_replicas=1,
        wait_timeout_seconds=2.0,
    )
    entry = RosterEntry(role="moderator", kind="user")
    try:
        state = await store.load("room", ["alice"])
        state.participants["alice"] = entry
        await store.save_entry("room", state, "alice")
        assert (await store.load("room", ["alice"])).participants["alice"] == entry

        old = group.kill_master()
        await asyncio.to_thread(group.wait_failover, old)
        deadline = time.monotonic() + 20
        while True:
            try:
                again = await store.load("room", ["alice"])
                break
            except StoreUnavailable:
                assert time.monotonic() < deadline, "the store never reached the new master"
                await asyncio.sleep(0.2)
        # Acknowledged by the replica before the kill, so the promoted replica has it.
        assert again.participants["alice"] == entry
        # The killed node back as a replica of the new master: a full sync over TLS (and the group has
        # a replica again for the next test's writes).
        await asyncio.to_thread(group.start_as_replica, old)
        state = await store.load("room", ["bob"])
        state.participants["bob"] = entry
        await store.save_entry("room", state, "bob")  # WAIT 1: the re-synced replica acknowledged it
    finally:
        await store.close()


async def test_service_joins_through_tls_sentinels(
    tls_sentinels: RedisSentinelGroup, emulator_process: EmulatorProcess
) -> None:
    """The real service with ``REDIS_SENTINELS``, ``REDIS_TLS=true`` and ``REDIS_TLS_CA_FILE`` (on the
    shared broker): a join answered, its room on the master the Sentinels name."""
    group = tls_sentinels
    # The module's group may have just failed over (the test above): start from one that settled.
    await asyncio.to_thread(group.wait_whole)
    key, log = await _join_through_the_service(emulator_process, group.service_env())
    assert "(TLS)" in log
    with group.client(group.master()) as direct:
        assert direct.hexists(key, "alice")
