"""RabbitMQ users and permissions for a test: the shipped definitions file, imported as it is, with only
its names changed to the test's uuid-named ones (vhost, users, exchanges, queues), plus two users of
the test's own (a rogue with a controller's permissions that the service does not trust, and an
outsider who may use nothing but resources of its own). Removed again at the end.

Needs ``rabbitmqctl`` on the machine that runs RabbitMQ (as in CI); its calls take seconds each, so a
test session imports once and removes everything with one more call.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aio_pika

from livekit_signaling.schemas.routing import EVERY_EVENT
from testkit.amqp import SignalingClient
from testkit.broker_admin import rabbitmqctl
from testkit.processes import AMQP_URL, Names

ROOT = Path(__file__).resolve().parents[1]
DEFINITIONS = ROOT / "deploy" / "rabbitmq" / "definitions.json"
CONFINED_CONTROLLER = ROOT / "deploy" / "rabbitmq" / "definitions-confined-controller.json"

#: The names the shipped files use, as the service's settings default them.
SHIPPED_VHOST = "livekit"
SHIPPED_SERVICE_USER = "livekit-signaling"
SHIPPED_CONTROLLER = "livekit-controller"
SHIPPED_CONFINED_CONTROLLER = "livekit-controller-tenant-a"
SHIPPED_COMMAND_EXCHANGE = "livekit.commands"
SHIPPED_EVENT_EXCHANGE = "livekit.events"
SHIPPED_DEAD_LETTER = "livekit-signaling.dead-letter"
SHIPPED_QUEUE = "livekit-signaling"
#: Rooms the confined controller may use (its topic permissions in the shipped file).
CONFINED_ROOM_PREFIX = "tenant-a_"

REGEX_FIELDS = ("configure", "write", "read")

#: Users with the service's permissions minus one right on one of its resources (an attribute of
#: ``BrokerAccounts``), to show that the service needs each: name suffix -> (right, resource).
SERVICE_WITHOUT = {
    "dead-letter-write": ("write", "dead_letter_exchange"),
    "partition-read": ("read", "spare_partition"),
    "partition-write": ("write", "first_partition"),
    "commands-read": ("read", "command_exchange"),
    "hash-write": ("write", "hash_exchange"),
    "commands-topic-read": ("topic-read", "command_exchange"),
}


def password_hash(password: str) -> str:
    """RabbitMQ's ``rabbit_password_hashing_sha256``: base64(salt + sha256(salt + password))."""
    salt = os.urandom(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


@dataclass
class BrokerAccounts:
    names: Names
    password: str = field(default_factory=lambda: uuid.uuid4().hex)
    vhost: str = field(init=False)
    # The users, named after the test's prefix.
    service: str = field(init=False)
    controller: str = field(init=False)
    confined_controller: str = field(init=False)
    #: Has a controller's permissions, but is not one of the service's trusted publishers.
    rogue: str = field(init=False)
    #: Anyone else in the vhost: may use only resources named ``<outsider>.*``.
    outsider: str = field(init=False)
    # The service's resources by role, with the test's names.
    command_exchange: str = field(init=False)
    dead_letter_exchange: str = field(init=False)
    hash_exchange: str = field(init=False)
    first_partition: str = field(init=False)
    #: A partition name the service's regexes cover but the test service does not use: RabbitMQ checks
    #: some rights only when a queue is created.
    spare_partition: str = field(init=False)

    def __post_init__(self) -> None:
        prefix = self.names.prefix
        self.vhost = prefix
        self.service = f"{prefix}-signaling"
        self.controller = f"{prefix}-controller"
        self.confined_controller = f"{prefix}-controller-tenant-a"
        self.rogue = f"{prefix}-rogue"
        self.outsider = f"{prefix}-outsider"
        self.command_exchange = self.names.command_exchange
        self.dead_letter_exchange = self.names.dead_letter
        self.hash_exchange = self.names.hash_exchange
        self.first_partition = f"{self.names.queue}.0"
        self.spare_partition = f"{self.names.queue}.99"

    def service_without(self, suffix: str) -> str:
        return f"{self.names.prefix}-service-without-{suffix}"

    @property
    def users(self) -> list[str]:
        fixed = [self.service, self.controller, self.confined_controller, self.rogue, self.outsider]
        return fixed + [self.service_without(suffix) for suffix in SERVICE_WITHOUT]

    def url(self, user: str) -> str:
        """The test broker's URL with this user's credentials and the test's vhost."""
        parts = urlsplit(AMQP_URL)
        address = f"{parts.hostname or '127.0.0.1'}:{parts.port or 5672}"
        return f"amqp://{quote(user, safe='')}:{self.password}@{address}/{quote(self.vhost, safe='')}"

    def client(self, user: str, *, binding: str = EVERY_EVENT) -> SignalingClient:
        """A controller connected as ``user`` with exactly its permissions: it declares nothing but a
        server-named queue (bound with ``binding``), and its commands carry its name as ``user_id``."""
        return SignalingClient(
            self.names,
            name=user,
            url=self.url(user),
            user_id=user,
            least_privilege=True,
            binding=binding,
        )

    # -- the shipped files, renamed ---------------------------------------------------------------------

    def renamed(self, definitions: dict[str, Any]) -> dict[str, Any]:
        """The shipped definitions with the test's names; every permission regex keeps its shape."""
        users = {
            SHIPPED_SERVICE_USER: self.service,
            SHIPPED_CONTROLLER: self.controller,
            SHIPPED_CONFINED_CONTROLLER: self.confined_controller,
        }
        exchanges = {
            SHIPPED_COMMAND_EXCHANGE: self.names.command_exchange,
            SHIPPED_EVENT_EXCHANGE: self.names.event_exchange,
        }
        resources = {
            **exchanges,
            SHIPPED_DEAD_LETTER: self.names.dead_letter,
            SHIPPED_QUEUE: self.names.queue,
        }
        # The regexes hold the names escaped (``livekit\.commands``); longest first, so that the queue
        # prefix ``livekit-signaling`` does not eat ``livekit-signaling\.dead-letter``.
        escaped = {re.escape(old).replace(r"\-", "-"): re.escape(new) for old, new in resources.items()}
        pattern = re.compile("|".join(re.escape(old) for old in sorted(escaped, key=len, reverse=True)))

        def regex(value: str) -> str:
            return pattern.sub(lambda match: escaped[match.group(0)], value)

        renamed: dict[str, Any] = {}
        renamed["vhosts"] = [{**v, "name": self.vhost} for v in definitions.get("vhosts", [])]
        renamed["users"] = [
            {**u, "name": users[u["name"]], "password_hash": password_hash(self.password)}
            for u in definitions.get("users", [])
        ]
        renamed["permissions"] = [
            {**p, "user": users[p["user"]], "vhost": self.vhost, **{k: regex(p[k]) for k in REGEX_FIELDS}}
            for p in definitions.get("permissions", [])
        ]
        renamed["topic_permissions"] = [
            {**t, "user": users[t["user"]], "vhost": self.vhost, "exchange": exchanges[t["exchange"]]}
            for t in definitions.get("topic_permissions", [])
        ]
        for entry in [*definitions.get("permissions", []), *definitions.get("topic_permissions", [])]:
            assert entry["vhost"] == SHIPPED_VHOST, entry
        return renamed

    def test_users(self, shipped: dict[str, Any]) -> dict[str, Any]:
        """The rogue (a copy of the controller's permissions), the outsider, and the service's user
        minus one right at a time (``SERVICE_WITHOUT``)."""
        [controller] = [p for p in shipped["permissions"] if p["user"] == self.controller]
        controller_topics = [t for t in shipped["topic_permissions"] if t["user"] == self.controller]
        [service] = [p for p in shipped["permissions"] if p["user"] == self.service]
        service_topics = [t for t in shipped["topic_permissions"] if t["user"] == self.service]
        own = f"^{re.escape(self.outsider)}\\..*"
        permissions = [
            {**controller, "user": self.rogue},
            {"user": self.outsider, "vhost": self.vhost, "configure": own, "write": own, "read": own},
        ]
        topics = [{**t, "user": self.rogue} for t in controller_topics]
        for suffix, (right, attribute) in SERVICE_WITHOUT.items():
            user, resource = self.service_without(suffix), getattr(self, attribute)
            granted = {**service, "user": user}
            if right in REGEX_FIELDS:
                # The same regex, except for that one name (a PCRE lookahead).
                granted[right] = f"(?!^{re.escape(resource)}$){service[right]}"
            permissions.append(granted)
            for entry in service_topics:
                withheld = right == "topic-read" and entry["exchange"] == resource
                topics.append({**entry, "user": user, **({"read": "^$"} if withheld else {})})
        return {
            "users": [
                {
                    "name": user,
                    "password_hash": password_hash(self.password),
                    "hashing_algorithm": "rabbit_password_hashing_sha256",
                    "tags": [],
                }
                for user in self.users
                if user not in {self.service, self.controller, self.confined_controller}
            ],
            "permissions": permissions,
            "topic_permissions": topics,
        }

    def definitions(self) -> dict[str, Any]:
        shipped = [self.renamed(json.loads(path.read_text())) for path in (DEFINITIONS, CONFINED_CONTROLLER)]
        merged: dict[str, list[Any]] = {"vhosts": [], "users": [], "permissions": [], "topic_permissions": []}
        for part in [*shipped, self.test_users(shipped[0])]:
            for key, items in part.items():
                merged[key] += items
        return merged

    # -- lifecycle --------------------------------------------------------------------------------------

    async def create(self, *, timeout: float = 30.0) -> None:
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as file:
            json.dump(self.definitions(), file)
        try:
            os.chmod(file.name, 0o644)
            rabbitmqctl("import_definitions", file.name)
        finally:
            os.unlink(file.name)
        # rabbitmqctl calls the import "asynchronous": wait until every user can log in.
        deadline = time.monotonic() + timeout
        for user in self.users:
            while True:
                try:
                    connection = await aio_pika.connect(self.url(user))
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)
                    continue
                await connection.close()
                break

    def remove(self) -> None:
        """The vhost (with every queue and exchange in it) and the users, in one rabbitmqctl call."""
        binaries = ", ".join(f'<<"{name}">>' for name in self.users)
        rabbitmqctl(
            "eval",
            f'rabbit_vhost:delete(<<"{self.vhost}">>, <<"tests">>), '
            f'[rabbit_auth_backend_internal:delete_user(U, <<"tests">>) || U <- [{binaries}]], ok.',
        )
