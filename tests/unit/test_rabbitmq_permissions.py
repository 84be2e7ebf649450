"""The shipped RabbitMQ permissions agree with each other and with the service they are for.

- deploy/rabbitmq/*.json (for ``rabbitmqctl import_definitions``) and the Messaging Topology Operator
  objects of the example overlay grant exactly the same;
- with the names the overlay configures, the service's user may do every operation the service does
  (the regexes are matched as RabbitMQ matches them: unanchored, over resource names) and no more on
  the exchanges that matter; a controller the reverse;
- ``SIGNALING_TRUSTED_PUBLISHERS`` names the controllers, not the service.

That RabbitMQ enforces them is tests/security's job, against a real broker.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from livekit_signaling.app.settings import Settings
from livekit_signaling.schemas.routing import command_routing_key, participant_routing_key
from livekit_signaling.transport.amqp import Topology
from tests.unit.test_deploy import one, rendered

ROOT = Path(__file__).resolve().parents[2]
DEFINITIONS = [
    ROOT / "deploy/rabbitmq/definitions.json",
    ROOT / "deploy/rabbitmq/definitions-confined-controller.json",
]
OVERLAY = "deploy/overlays/example"
SERVICE_USER = "livekit-signaling"
CONTROLLERS = ["livekit-controller", "livekit-controller-tenant-a"]
#: The binding key of the service's one binding from the command exchange (transport.amqp._declare).
COMMAND_BINDING = "room.*"
ROOMS = [str(uuid.uuid4()), f"{uuid.uuid4()}:{uuid.uuid4().hex[:8]}", "tenant-a_r-1"]


def shipped() -> dict[str, Any]:
    merged: dict[str, list[Any]] = {"vhosts": [], "users": [], "permissions": [], "topic_permissions": []}
    for path in DEFINITIONS:
        for key, items in json.loads(path.read_text()).items():
            merged[key] += items
    return merged


def permissions(user: str) -> dict[str, str]:
    [entry] = [p for p in shipped()["permissions"] if p["user"] == user]
    return entry


def topic(user: str, exchange: str) -> dict[str, str]:
    [entry] = [t for t in shipped()["topic_permissions"] if t["user"] == user and t["exchange"] == exchange]
    return entry


def allows(regex: str, name: str) -> bool:
    """RabbitMQ's test (rabbit_auth_backend_internal): an unanchored match; an empty regex is "^$"."""
    return re.search(regex or "^$", name) is not None


def topology() -> Topology:
    """The names the example overlay configures (the settings' defaults where it sets none)."""
    config = one(OVERLAY, "ConfigMap")["data"]
    defaults = {f.metadata["env"]: f.default for f in Settings.__dataclass_fields__.values()}

    def setting(name: str) -> str:
        return str(config.get(name, defaults[name]))

    return Topology(
        command_exchange=setting("SIGNALING_COMMAND_EXCHANGE"),
        event_exchange=setting("SIGNALING_EVENT_EXCHANGE"),
        queue=setting("SIGNALING_QUEUE"),
        partitions=int(setting("SIGNALING_PARTITIONS")),
        dead_letter_exchange=setting("SIGNALING_DEAD_LETTER_EXCHANGE"),
        delivery_limit=int(setting("SIGNALING_DELIVERY_LIMIT")),
    )


PERMISSION_RIGHTS = ("configure", "write", "read")
TOPIC_RIGHTS = ("exchange", "write", "read")


def grants(entries: list[dict[str, Any]], rights: tuple[str, ...]) -> list[tuple[str, ...]]:
    """(user, vhost, *rights) of each entry, sorted: a definitions file's entry holds its rights itself,
    an operator object's spec under ``permissions``."""
    return sorted(
        (e["user"], e["vhost"], *(e.get("permissions", e)[right] for right in rights)) for e in entries
    )


def test_operator_objects_grant_what_the_definitions_file_grants() -> None:
    objects = [o for o in rendered(OVERLAY) if o["apiVersion"] == "rabbitmq.com/v1beta1"]

    def spec(kind: str) -> list[dict[str, Any]]:
        return [o["spec"] for o in objects if o["kind"] == kind]

    users = sorted(o["metadata"]["name"] for o in objects if o["kind"] == "User")
    as_operator = {
        "vhosts": sorted(v["name"] for v in spec("Vhost")),
        "users": users,
        "permissions": grants(spec("Permission"), PERMISSION_RIGHTS),
        "topic_permissions": grants(spec("TopicPermission"), TOPIC_RIGHTS),
    }
    definitions = shipped()
    as_file = {
        "vhosts": sorted(v["name"] for v in definitions["vhosts"]),
        "users": sorted(u["name"] for u in definitions["users"]),
        "permissions": grants(definitions["permissions"], PERMISSION_RIGHTS),
        "topic_permissions": grants(definitions["topic_permissions"], TOPIC_RIGHTS),
    }
    assert as_operator == as_file
    # Users without passwords, and without management tags.
    assert all(u["password_hash"] == "" and u["tags"] == [] for u in definitions["users"])
    assert all("tags" not in u for u in spec("User"))


def test_the_service_may_do_what_it_does_and_no_more() -> None:
    t = topology()
    granted = permissions(SERVICE_USER)
    partitions = [t.partition_queue(n) for n in range(t.partitions)]
    one_queue = t.queue  # SIGNALING_PARTITIONS=1
    declared = [
        t.command_exchange,
        t.event_exchange,
        t.dead_letter_exchange,
        t.hash_exchange,
        *partitions,
        one_queue,
    ]
    for name in declared:
        assert allows(granted["configure"], name), f"declare {name}"
    # queue.declare with x-dead-letter-exchange also needs write on that exchange and read on the queue.
    # Published to: events, dead letters. Bound to (write on the destination): the hash exchange, the
    # partition queues, the dead-letter queue.
    for name in [t.event_exchange, t.dead_letter_exchange, t.hash_exchange, *partitions, one_queue]:
        assert allows(granted["write"], name), f"write {name}"
    # Bound from (read on the source): commands, the hash exchange, the dead-letter exchange; consumed:
    # the partitions.
    for name in [t.command_exchange, t.hash_exchange, t.dead_letter_exchange, *partitions, one_queue]:
        assert allows(granted["read"], name), f"read {name}"
    assert not allows(granted["write"], t.command_exchange), "the service must not publish commands"
    assert not allows(granted["read"], t.event_exchange), "the service must not bind to events"
    for other in ["amq.gen-x", "livekit-signaling-other", f"{t.queue}.x", f"{t.queue}.partitions2"]:
        assert not allows(granted["configure"], other), other

    commands, events = topic(SERVICE_USER, t.command_exchange), topic(SERVICE_USER, t.event_exchange)
    assert allows(commands["read"], COMMAND_BINDING)
    assert not allows(commands["read"], "room.#") and not allows(commands["write"], "room.r")
    for room in ROOMS:
        assert allows(events["write"], participant_routing_key(room, str(uuid.uuid4())))
        assert not allows(events["write"], command_routing_key(room))
    assert not allows(events["read"], "room.#")


@pytest.mark.parametrize("controller", CONTROLLERS)
def test_a_controller_commands_and_reads_events_only(controller: str) -> None:
    t = topology()
    granted = permissions(controller)
    assert allows(granted["write"], t.command_exchange)
    assert allows(granted["read"], t.event_exchange)
    # Its own queues are server-named (amq.gen-*): declare, bind (write on the queue), consume.
    for right in ("configure", "write", "read"):
        assert allows(granted[right], "amq.gen-0123456789abcdef")
    service_resources = [
        t.command_exchange, t.event_exchange, t.dead_letter_exchange, t.hash_exchange,
        *(t.partition_queue(n) for n in range(t.partitions)), t.queue,
    ]  # fmt: skip
    for name in service_resources:
        assert not allows(granted["configure"], name), f"configure {name}"
        if name != t.command_exchange:
            assert not allows(granted["write"], name), f"write {name}"
        if name != t.event_exchange:
            assert not allows(granted["read"], name), f"read {name}"
    commands, events = topic(controller, t.command_exchange), topic(controller, t.event_exchange)
    assert not allows(commands["read"], "room.#") and not allows(events["write"], "room.r.participant.p")
    assert not allows(commands["write"], "room.r.participant.p"), "commands go to room.<room> only"


def test_the_confined_controller_reaches_only_its_rooms() -> None:
    t = topology()
    commands, events = topic(CONTROLLERS[1], t.command_exchange), topic(CONTROLLERS[1], t.event_exchange)
    assert allows(commands["write"], command_routing_key("tenant-a_r-1"))
    assert allows(events["read"], "room.tenant-a_r-1.#")
    for room in [*ROOMS[:2], "tenant-b_r-1", "tenant-a"]:
        assert not allows(commands["write"], command_routing_key(room)), room
        assert not allows(events["read"], f"room.{room}.#"), room
    for binding in ["#", "room.#", "room.*.#", "*.tenant-a_r-1.#"]:
        assert not allows(events["read"], binding), binding


def test_the_overlay_trusts_the_controllers_and_runs_the_service_under_its_own_user() -> None:
    config = one(OVERLAY, "ConfigMap")["data"]
    trusted = set(config["SIGNALING_TRUSTED_PUBLISHERS"].split(","))
    assert trusted == set(CONTROLLERS)
    users = {o["metadata"]["name"] for o in rendered(OVERLAY) if o["kind"] == "User"}
    assert SERVICE_USER in users and trusted <= users
    assert SERVICE_USER not in trusted
