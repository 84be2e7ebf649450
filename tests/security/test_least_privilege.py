"""The shipped RabbitMQ permissions (deploy/rabbitmq/*.json), imported into the test's own vhost: the
service does its whole job under them, and the broker refuses everything else the table of
docs/security.md says it refuses. Each refusal is RabbitMQ's own (the channel is closed with ACCESS_REFUSED or
PRECONDITION_FAILED), checked on a real broker rather than read from its documentation."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiormq
import pytest
from aiormq import spec

from testkit.amqp import SignalingClient
from testkit.broker_accounts import CONFINED_ROOM_PREFIX, SERVICE_WITHOUT, BrokerAccounts
from testkit.emulator import Emulator, microphone_tracks
from testkit.processes import EmulatorProcess, ServiceProcess
from tests.security.conftest import secured_env


def pid() -> str:
    return str(uuid.uuid4())


async def test_service_runs_under_the_shipped_permissions(
    secured_service: ServiceProcess, controller: SignalingClient, emulator: Emulator
) -> None:
    """Join, a moderator command acted on in LiveKit, and an error, with every party on its own user."""
    room, moderator, user = pid(), pid(), pid()
    joined = await controller.reply(room, moderator, {"action": "join"}, role="moderator")
    assert joined.message == "join_success"
    joined = await controller.reply(room, user, {"action": "join"})
    await emulator.connect(joined.payload["credentials"]["token"])
    track = await emulator.publish(room, user, "microphone")

    message_id = await controller.send(
        room, moderator, {"action": "force_mute", "participants": [user]}, role="moderator"
    )
    [muted] = await controller.wait_for(lambda e: e.correlation_id == message_id)
    assert muted.message == "force_muted" and muted.participant == user
    [microphone] = microphone_tracks(await emulator.participant(room, user))
    assert microphone.sid == track and microphone.muted

    refused = await controller.reply(room, user, {"action": "force_mute", "participants": [moderator]})
    assert refused.payload == {"message": "error", "error": "insufficient_permissions"}

    assert secured_service.is_ready()
    assert "ACCESS_REFUSED" not in secured_service.logs()


async def test_one_partition_topology_under_the_shipped_permissions(
    accounts: BrokerAccounts, emulator_process: EmulatorProcess, secured_service: ServiceProcess
) -> None:
    """``SIGNALING_PARTITIONS=1`` binds its queue to the command exchange directly (no hash exchange):
    the same permissions cover that topology too."""
    single = ServiceProcess(
        accounts.names, emulator_process.url, partitions=1, env=secured_env(accounts), name="one-partition"
    )
    try:
        single.start()
        assert "ACCESS_REFUSED" not in single.logs()
    finally:
        single.stop()
        # Its queue would otherwise receive a copy of every command the other tests send.
        connection = await aiormq.connect(accounts.url(accounts.service))
        channel = await connection.channel()
        await channel.queue_delete(accounts.names.queue)
        await connection.close()


# --- what the broker refuses (and, as controls, what it allows) ------------------------------------

Operation = Callable[[aiormq.abc.AbstractChannel, BrokerAccounts], Awaitable[object]]


@dataclass(frozen=True)
class Case:
    who: str  # an attribute of BrokerAccounts
    operation: Operation
    refused_with: type[aiormq.exceptions.AMQPError] | None


ACCESS_REFUSED = aiormq.exceptions.ChannelAccessRefused
PRECONDITION_FAILED = aiormq.exceptions.ChannelPreconditionFailed


def publish(exchange: str, routing_key: str, *, user_id: str | None = None) -> Operation:
    """Publish (with publisher confirms) to ``exchange`` of the test's names (``commands``/``events``)."""

    async def operation(channel: aiormq.abc.AbstractChannel, accounts: BrokerAccounts) -> object:
        return await channel.basic_publish(
            b"{}",
            exchange=getattr(accounts.names, f"{exchange}_exchange"),
            routing_key=routing_key,
            properties=spec.Basic.Properties(
                user_id=getattr(accounts, user_id) if user_id else None, message_id=uuid.uuid4().hex
            ),
        )

    return operation


def bind_own_queue(exchange: str, binding: str, *, named_after: str | None = None) -> Operation:
    """Declare a queue of one's own (server-named, as a controller's is; or ``<user>.<n>`` for a user
    whose permissions name its resources) and bind it to ``exchange`` of the test's names."""

    async def operation(channel: aiormq.abc.AbstractChannel, accounts: BrokerAccounts) -> object:
        name = f"{getattr(accounts, named_after)}.{uuid.uuid4().hex[:6]}" if named_after else ""
        declared = await channel.queue_declare(name, exclusive=True, auto_delete=True)
        source = getattr(accounts.names, f"{exchange}_exchange")
        return await channel.queue_bind(declared.queue, source, routing_key=binding)

    return operation


async def use_own_resources(channel: aiormq.abc.AbstractChannel, accounts: BrokerAccounts) -> object:
    """The outsider's control case: its own exchange and queue work, so its refusals are about ours."""
    exchange, queue = f"{accounts.outsider}.x", f"{accounts.outsider}.q"
    await channel.exchange_declare(exchange=exchange, exchange_type="topic", auto_delete=True)
    await channel.queue_declare(queue, exclusive=True, auto_delete=True)
    await channel.queue_bind(queue, exchange, routing_key="room.#")
    return await channel.basic_publish(b"{}", exchange=exchange, routing_key="room.r")


async def bind_service_queue_to_events(
    channel: aiormq.abc.AbstractChannel, accounts: BrokerAccounts
) -> object:
    return await channel.queue_bind(
        accounts.names.dead_letter, accounts.names.event_exchange, routing_key="room.#"
    )


async def ignore(_message: object) -> None:
    pass


def consume(queue: str) -> Operation:
    async def operation(channel: aiormq.abc.AbstractChannel, accounts: BrokerAccounts) -> object:
        name = accounts.names.dead_letter if queue == "dead-letter" else f"{accounts.names.queue}.{queue}"
        return await channel.basic_consume(name, ignore)

    return operation


async def declare_command_exchange(channel: aiormq.abc.AbstractChannel, accounts: BrokerAccounts) -> object:
    return await channel.exchange_declare(
        exchange=accounts.names.command_exchange, exchange_type="topic", durable=True
    )


async def declare_other_queue(channel: aiormq.abc.AbstractChannel, accounts: BrokerAccounts) -> object:
    return await channel.queue_declare(f"{accounts.names.prefix}.anything", durable=True)


CONFINED_ROOM = f"{CONFINED_ROOM_PREFIX}{uuid.uuid4()}"
OTHER_ROOM = f"tenant-b_{uuid.uuid4()}"

CASES = {
    # anyone else in the vhost
    "outsider-cannot-publish-commands": Case("outsider", publish("command", "room.r"), ACCESS_REFUSED),
    "outsider-cannot-bind-to-events": Case(
        "outsider", bind_own_queue("event", "room.#", named_after="outsider"), ACCESS_REFUSED
    ),
    "outsider-cannot-bind-to-commands": Case(
        "outsider", bind_own_queue("command", "room.#", named_after="outsider"), ACCESS_REFUSED
    ),
    "outsider-cannot-consume-partitions": Case("outsider", consume("0"), ACCESS_REFUSED),
    "outsider-cannot-consume-dead-letters": Case("outsider", consume("dead-letter"), ACCESS_REFUSED),
    "outsider-can-use-its-own-resources": Case("outsider", use_own_resources, None),
    # a controller
    "controller-can-bind-to-events": Case("controller", bind_own_queue("event", "room.#"), None),
    "controller-can-publish-commands": Case("controller", publish("command", "room.r"), None),
    "controller-cannot-declare-the-command-exchange": Case(
        "controller", declare_command_exchange, ACCESS_REFUSED
    ),
    "controller-cannot-publish-events": Case(
        "controller", publish("event", "room.r.participant.p"), ACCESS_REFUSED
    ),
    "controller-cannot-bind-to-commands": Case(
        "controller", bind_own_queue("command", "room.#"), ACCESS_REFUSED
    ),
    "controller-cannot-consume-partitions": Case("controller", consume("0"), ACCESS_REFUSED),
    "controller-cannot-consume-dead-letters": Case("controller", consume("dead-letter"), ACCESS_REFUSED),
    "controller-cannot-publish-off-the-room-key": Case(
        "controller", publish("command", "room.r.participant.p"), ACCESS_REFUSED
    ),
    "controller-cannot-claim-another-user": Case(
        "controller", publish("command", "room.r", user_id="confined_controller"), PRECONDITION_FAILED
    ),
    # a controller confined to its rooms by topic permissions
    "confined-controller-can-publish-its-rooms": Case(
        "confined_controller", publish("command", f"room.{CONFINED_ROOM}"), None
    ),
    "confined-controller-cannot-publish-other-rooms": Case(
        "confined_controller", publish("command", f"room.{OTHER_ROOM}"), ACCESS_REFUSED
    ),
    "confined-controller-can-bind-its-rooms": Case(
        "confined_controller", bind_own_queue("event", f"room.{CONFINED_ROOM}.#"), None
    ),
    "confined-controller-cannot-bind-all-rooms": Case(
        "confined_controller", bind_own_queue("event", "room.#"), ACCESS_REFUSED
    ),
    "confined-controller-cannot-bind-other-rooms": Case(
        "confined_controller", bind_own_queue("event", f"room.{OTHER_ROOM}.#"), ACCESS_REFUSED
    ),
    # the service
    "service-cannot-publish-commands": Case("service", publish("command", "room.r"), ACCESS_REFUSED),
    "service-cannot-bind-to-events": Case("service", bind_service_queue_to_events, ACCESS_REFUSED),
    "service-cannot-publish-off-the-participant-key": Case(
        "service", publish("event", "room.r"), ACCESS_REFUSED
    ),
    "service-cannot-declare-other-queues": Case("service", declare_other_queue, ACCESS_REFUSED),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
async def test_broker_enforces_the_shipped_permissions(
    case: Case, accounts: BrokerAccounts, secured_service: ServiceProcess
) -> None:
    connection = await aiormq.connect(accounts.url(getattr(accounts, case.who)))
    try:
        channel = await connection.channel()
        if case.refused_with is None:
            await case.operation(channel, accounts)
        else:
            with pytest.raises(case.refused_with) as refused:
                await case.operation(channel, accounts)
            code = "ACCESS_REFUSED" if case.refused_with is ACCESS_REFUSED else "PRECONDITION_FAILED"
            assert str(refused.value).startswith(code)
    finally:
        await connection.close()


# --- every right the service has is one it needs ----------------------------------------------------


def partition_arguments(accounts: BrokerAccounts) -> dict[str, object]:
    """As the service declares its partition queues (default SIGNALING_DELIVERY_LIMIT)."""
    return {
        "x-queue-type": "quorum",
        "x-single-active-consumer": True,
        "x-delivery-limit": 5,
        "x-dead-letter-exchange": accounts.names.dead_letter,
    }


async def declare_new_partition(channel: aiormq.abc.AbstractChannel, accounts: BrokerAccounts) -> object:
    """As the service declares a partition queue it has not declared before: RabbitMQ checks write on
    the dead-letter exchange and read on the queue only when ``queue.declare`` creates the queue."""
    return await channel.queue_declare(
        accounts.spare_partition, durable=True, arguments=partition_arguments(accounts)
    )


async def bind_hash_to_commands(channel: aiormq.abc.AbstractChannel, accounts: BrokerAccounts) -> object:
    return await channel.exchange_bind(
        destination=accounts.hash_exchange, source=accounts.command_exchange, routing_key="room.*"
    )


async def bind_partition_to_hash(channel: aiormq.abc.AbstractChannel, accounts: BrokerAccounts) -> object:
    return await channel.queue_bind(accounts.first_partition, accounts.hash_exchange, routing_key="1")


#: What the service does that fails without one of its rights (the suffixes of SERVICE_WITHOUT).
NEEDED = {
    # queue.declare creating a queue with x-dead-letter-exchange: configure on the queue, write on
    # that exchange, and read on the queue
    "dead-letter-write": declare_new_partition,
    "partition-read": declare_new_partition,
    # exchange.bind: read on the source, write on the destination, topic read on the binding key
    "commands-read": bind_hash_to_commands,
    "hash-write": bind_hash_to_commands,
    "commands-topic-read": bind_hash_to_commands,
    # queue.bind: write on the queue (read on the exchange, as above)
    "partition-write": bind_partition_to_hash,
}
assert set(NEEDED) == set(SERVICE_WITHOUT)


@pytest.mark.parametrize("withheld", NEEDED)
async def test_each_right_of_the_service_is_needed(
    withheld: str, accounts: BrokerAccounts, secured_service: ServiceProcess
) -> None:
    """Refused with one right less, then done with the shipped permissions (in that order: a queue that
    exists is not checked again). The operations redo what the running service did, or declare a spare
    partition queue, removed again."""
    operation = NEEDED[withheld]
    for user, refused in [(accounts.service_without(withheld), True), (accounts.service, False)]:
        connection = await aiormq.connect(accounts.url(user))
        try:
            channel = await connection.channel()
            if refused:
                with pytest.raises(ACCESS_REFUSED) as error:
                    await operation(channel, accounts)
                # Refused for the right withheld, not for another.
                _, resource = SERVICE_WITHOUT[withheld]
                assert f"'{getattr(accounts, resource)}'" in str(error.value)
            else:
                await operation(channel, accounts)
                await channel.queue_delete(accounts.spare_partition)
        finally:
            await connection.close()
