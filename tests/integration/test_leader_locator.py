"""Partition queues and the quorum leader locator, which spreads a cluster's partition leaders over its
nodes: new queues are created with ``x-queue-leader-locator: balanced``; queues an earlier release
created without it (RabbitMQ refuses to redeclare them with it: PRECONDITION_FAILED) are taken as they
are, so existing deployments keep starting and consuming."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid

from testkit.amqp import SignalingClient, declare_partition_queues_as_before, delete_topology
from testkit.processes import PARTITIONS, EmulatorProcess, Names, ServiceProcess

DELIVERY_LIMIT = 5


def partition_arguments(names: Names) -> dict[str, dict[str, object]]:
    """Each partition queue's arguments, as the broker keeps them."""
    listed = subprocess.run(
        ["rabbitmqctl", "list_queues", "name", "arguments", "--formatter", "json", "-q"],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    wanted = set(names.partition_queues())
    return {
        row["name"]: {name: value for name, _type, value in row["arguments"]}
        for row in json.loads(listed)
        if row["name"] in wanted
    }


async def test_new_partition_queues_get_the_balanced_leader_locator(
    service: ServiceProcess, names: Names
) -> None:
    arguments = await asyncio.to_thread(partition_arguments, names)
    assert len(arguments) == PARTITIONS
    assert {args.get("x-queue-leader-locator") for args in arguments.values()} == {"balanced"}


async def test_queues_of_an_earlier_release_keep_their_arguments_and_are_consumed(
    emulator_process: EmulatorProcess,
) -> None:
    names = Names()
    await declare_partition_queues_as_before(names, PARTITIONS, delivery_limit=DELIVERY_LIMIT)
    service = ServiceProcess(
        names, emulator_process.url, env={"SIGNALING_DELIVERY_LIMIT": str(DELIVERY_LIMIT)}
    )
    try:
        await asyncio.to_thread(service.start)
        async with SignalingClient(names) as client:
            rooms = [str(uuid.uuid4()) for _ in range(8)]  # a few rooms, so that several partitions serve
            answers = await asyncio.gather(*(client.reply(room, "p-1", {"action": "join"}) for room in rooms))
        assert {answer.message for answer in answers} == {"join_success"}
        arguments = await asyncio.to_thread(partition_arguments, names)
        assert len(arguments) == PARTITIONS
        assert not any("x-queue-leader-locator" in args for args in arguments.values())
        assert "created without a leader locator" in service.logs()
    finally:
        await asyncio.to_thread(service.stop)
        await delete_topology(names)
