"""A broker that answers but refuses the service's topology is a configuration error, said once with its
fix (log and ``/readyz``), never "not reachable"; the replica recovers by itself once the broker is
fixed (docs/operations/first-run.md)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from testkit.amqp import declare_partition_queues_as_before, delete_queues, delete_topology
from testkit.broker_admin import BrokerUser, vhost_with_user
from testkit.processes import EmulatorProcess, Names, ServiceProcess
from testkit.rabbit_cluster import HASH_PLUGIN, RabbitCluster
from tests.integration.refusals import refusal_errors, wait_refused


@pytest.fixture
def restricted_user() -> Iterator[BrokerUser]:
    """A vhost where the service's user may configure everything but the consistent-hash exchange."""
    with vhost_with_user(configure=r"^(?!.*\.partitions$).*") as user:
        yield user


def test_refused_hash_exchange_is_named_with_its_fix_and_heals_once_granted(
    restricted_user: BrokerUser, emulator_process: EmulatorProcess
) -> None:
    names = Names()
    service = ServiceProcess(names, emulator_process.url, env={"AMQP_URL": restricted_user.url()})
    service.start(wait_ready=False)
    try:
        body = wait_refused(service)
        assert f"access to exchange '{names.hash_exchange}'" in body
        assert "ACCESS_REFUSED" in body and "fix: grant the service's RabbitMQ user" in body
        assert restricted_user.password not in body
        time.sleep(3)  # several retries: the cause is still said once
        errors = refusal_errors(service)
        assert len(errors) == 1, errors
        assert "RabbitMQ refused the service" in errors[0] and "ACCESS_REFUSED" in errors[0]
        assert restricted_user.password not in service.logs()
        assert service.metric("livekit_signaling_amqp_refused") == 1

        restricted_user.set_permissions(configure=".*")
        service.wait_ready(timeout=30)
        assert "amqp_refused" not in service.http("/readyz")[1]
        assert service.metric("livekit_signaling_amqp_refused") == 0
    finally:
        service.stop()


def test_queue_declared_with_other_arguments_names_the_argument_and_setting(
    emulator_process: EmulatorProcess,
) -> None:
    names = Names()
    asyncio.run(declare_partition_queues_as_before(names, 1, delivery_limit=99))
    service = ServiceProcess(names, emulator_process.url, env={"SIGNALING_DELIVERY_LIMIT": "5"})
    service.start(wait_ready=False)
    try:
        body = wait_refused(service)
        assert "PRECONDITION_FAILED - inequivalent arg 'x-delivery-limit'" in body
        assert f"queue '{names.queue}.0'" in body
        assert "SIGNALING_DELIVERY_LIMIT" in body and "received '5' but current is '99'" in body
        errors = refusal_errors(service)
        assert len(errors) == 1 and "x-delivery-limit" in errors[0], errors

        # The fix the line names: delete the (empty) queue; the service declares it anew by itself.
        asyncio.run(delete_queues([f"{names.queue}.0"]))
        service.wait_ready(timeout=30)
    finally:
        service.stop()
        asyncio.run(delete_topology(names))


@pytest.mark.slow
def test_a_stock_broker_without_the_hash_plugin_is_named_with_the_plugin_command(
    emulator_process: EmulatorProcess,
) -> None:
    """A first run as it happens: default settings (16 partitions) against a broker on which the
    consistent-hash plugin was never enabled. The plugin is node-wide, so the broker is a node of its
    own (testkit/rabbit_cluster.py, one node, no plugins; needs root or the rabbitmq user, as
    tests/ha do). The fix the line names, run on the node, heals the replica without a restart."""
    with RabbitCluster(size=1, plugins=()) as stock:
        service = ServiceProcess(Names(), emulator_process.url, env={"AMQP_URL": stock.amqp_url()})
        del service.env["SIGNALING_PARTITIONS"]  # the default
        service.start(wait_ready=False)
        try:
            body = wait_refused(service, timeout=30)
            assert "unknown exchange type 'x-consistent-hash'" in body
            assert f"rabbitmq-plugins enable {HASH_PLUGIN}" in body and "SIGNALING_PARTITIONS=1" in body
            time.sleep(3)  # several retries: the cause is still said once
            errors = refusal_errors(service)
            assert len(errors) == 1, errors
            assert f"rabbitmq-plugins enable {HASH_PLUGIN}" in errors[0]
            # The broker closes the whole connection for it: neither aiormq's error line nor a "lost"
            # warning repeats at every attempt.
            lost = [line for line in service.log_records() if "lost" in str(line.get("message"))]
            assert not lost, lost
            assert service.metric("livekit_signaling_amqp_refused") == 1

            stock.enable_plugin("a", HASH_PLUGIN)
            service.wait_ready(timeout=30)
            assert "amqp_refused" not in service.http("/readyz")[1]
            assert service.metric("livekit_signaling_amqp_refused") == 0
        finally:
            service.stop()

        # Disabled again: the node still knows the type's name, has no module for it, and says
        # "invalid exchange type" instead of "unknown"; the fix is the same plugin command.
        stock.disable_plugin("a", HASH_PLUGIN)
        service = ServiceProcess(Names(), emulator_process.url, env={"AMQP_URL": stock.amqp_url()})
        del service.env["SIGNALING_PARTITIONS"]
        service.start(wait_ready=False)
        try:
            body = wait_refused(service, timeout=30)
            assert "invalid exchange type 'x-consistent-hash'" in body
            assert f"rabbitmq-plugins enable {HASH_PLUGIN}" in body and "SIGNALING_PARTITIONS=1" in body
            errors = refusal_errors(service)
            assert len(errors) == 1 and f"rabbitmq-plugins enable {HASH_PLUGIN}" in errors[0], errors
        finally:
            service.stop()
