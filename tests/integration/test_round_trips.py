"""What one command of each kind costs on the wire and in work, counted (not timed): AMQP publishes and
frames, Redis commands and round trips, LiveKit calls, asyncio tasks, in a room of 3 and a room of 1,000.
The service runs in this process on a loop of its own (its tasks counted there), behind counting proxies
to RabbitMQ and Redis, against an emulator of its own (whose call log is the service's alone).

The counts are compared with the table in docs/round-trips.md: a count that grows or shrinks fails,
naming the command, the count, the table's figure and the new one. ``UPDATE_ROUND_TRIPS=1`` rewrites the
table instead."""

from __future__ import annotations

import asyncio
import os
import struct
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from testkit.amqp import SignalingClient, delete_topology
from testkit.cleanup import delete_redis_keys
from testkit.emulator import Emulator
from testkit.inprocess import InProcessService
from testkit.processes import (
    AMQP_URL,
    API_KEY,
    API_SECRET,
    REDIS_URL,
    EmulatorProcess,
    Names,
)
from testkit.wire_counts import AmqpCounter, CountingProxy, RedisCounter

DOC = Path(__file__).resolve().parents[2] / "docs" / "round-trips.md"
BEGIN, END = "<!-- round-trips:begin -->", "<!-- round-trips:end -->"
UPDATE = os.environ.get("UPDATE_ROUND_TRIPS") == "1"
SIZES = (3, 1000)
PARTITIONS = 16  # the service's default
#: Background work that comes with time, not commands, pushed beyond the test's length.
QUIET_ENV = {
    "AMQP_HEARTBEAT_SECONDS": "600",
    "REBALANCE_INTERVAL_SECONDS": "3600",
    "RECONCILE_INTERVAL_SECONDS": "0",
    "LIVEKIT_ROOM_CACHE_SECONDS": "3600",
    "OTEL_SDK_DISABLED": "true",
}


@dataclass(frozen=True)
class Step:
    """One command of the contract as the scenario sends it."""

    action: str
    sender: str  # "moderator", "target", "leaver" or "newcomer"
    payload: dict[str, Any]
    role: str = "user"
    #: Its row in the table, where it is not the action's own: a command refused or sent again.
    label: str | None = None
    #: Sent with the message id of the step before it: a copy the service has answered already.
    again: bool = False
    #: The error its sender must be told (``payload.error`` of the one answer), for a refused command.
    error: str | None = None

    @property
    def row(self) -> str:
        return self.label or self.action


#: Every command of the contract, in an order that needs no set-up between them: the target's
#: microphone is unmuted before ``force_mute``, screen sharing is granted then revoked, restrictions
#: enabled then disabled, the newcomer joins, a connected participant leaves, the room closes. Besides
#: them, the three ways a command is answered without being run: a copy of one answered already (no
#: answer, acknowledged), a moderator's command from a user and a payload that does not decode (each an
#: error event to the sender).
STEPS = (
    Step("join", "newcomer", {"action": "join"}),
    Step("create_new_access_token", "target", {"action": "create_new_access_token"}),
    Step(
        "create_new_access_token",
        "target",
        {"action": "create_new_access_token"},
        label="create_new_access_token (its message id again)",
        again=True,
    ),
    Step("request_popout_stream_access_token", "target", {"action": "request_popout_stream_access_token"}),
    Step(
        "force_mute",
        "target",
        {"action": "force_mute", "participants": ["moderator"]},
        label="force_mute (from a user: insufficient_permissions)",
        error="insufficient_permissions",
    ),
    Step(
        "force_mute",
        "moderator",
        {"action": "force_mute", "participants": "target"},
        "moderator",
        label="force_mute (participants not a list: invalid_command)",
        error="invalid_command",
    ),
    Step("force_mute", "moderator", {"action": "force_mute", "participants": ["target"]}, "moderator"),
    Step(
        "grant_screen_share_permission",
        "moderator",
        {"action": "grant_screen_share_permission", "participants": ["target"]},
        "moderator",
    ),
    Step(
        "revoke_screen_share_permission",
        "moderator",
        {"action": "revoke_screen_share_permission", "participants": ["target"]},
        "moderator",
    ),
    Step(
        "enable_microphone_restrictions",
        "moderator",
        {"action": "enable_microphone_restrictions", "unrestricted_participants": ["moderator"]},
        "moderator",
    ),
    Step(
        "disable_microphone_restrictions",
        "moderator",
        {"action": "disable_microphone_restrictions"},
        "moderator",
    ),
    Step("leave", "leaver", {"action": "leave"}),
    Step("close_room", "moderator", {"action": "close_room"}, "moderator"),
)

#: The table's columns after the command and the room size: heading, the store measured, the figure.
COLUMNS = (
    ("AMQP publishes", "memory", "publishes"),
    ("AMQP frames out", "memory", "frames_out"),
    ("AMQP frames in", "memory", "frames_in"),
    ("LiveKit calls", "memory", "livekit"),
    ("tasks (memory)", "memory", "tasks"),
    ("tasks (Redis)", "redis", "tasks"),
    ("Redis commands", "redis", "redis_commands"),
    ("Redis round trips", "redis", "redis_round_trips"),
    ("Redis commands by name", "redis", "redis_by_name"),
)
#: Figures that do not depend on where the state is kept.
WIRE_FIGURES = ("publishes", "frames_out", "frames_in", "livekit")


@dataclass(frozen=True)
class Cost:
    """What one command cost, between the quiet point before it and the one after it."""

    amqp: Counter[str]
    redis: Counter[str]
    tasks: Counter[str]  # by the name of their coroutine
    livekit: Counter[str]

    def figures(self) -> dict[str, Any]:
        return {
            "publishes": self.amqp["out.basic.publish"],
            # Every frame the service sent: publishes (method, header, body each), the ack.
            "frames_out": self.amqp["out.method"] + self.amqp["out.header"] + self.amqp["out.body"],
            # The delivery (method, header, body), without the broker's confirms: it may confirm
            # several publishes with one basic.ack (multiple), as its timing has it.
            "frames_in": self.amqp["in.method"]
            + self.amqp["in.header"]
            + self.amqp["in.body"]
            - self.amqp["in.basic.ack"],
            "livekit": dict(sorted(self.livekit.items())),
            "tasks": self.tasks.total(),
            "task_origins": dict(self.tasks.most_common()),
            "redis_commands": self.redis["commands"],
            "redis_round_trips": self.redis["round_trips"],
            "redis_by_name": {
                name.removeprefix("command."): n
                for name, n in sorted(self.redis.items())
                if name.startswith("command.")
            },
        }


class Harness:
    """The service behind counting proxies, a controller on the broker, the emulator's control."""

    def __init__(
        self,
        service: InProcessService,
        amqp: AmqpCounter,
        redis: RedisCounter,
        client: SignalingClient,
        emulator: Emulator,
    ) -> None:
        self.service, self.amqp, self.redis = service, amqp, redis
        self.client, self.emulator = client, emulator
        #: The counts at the latest quiet point: where the next command's count starts.
        self._mark = self._snapshot()

    def _snapshot(self) -> tuple[Counter[str], Counter[str], Counter[str]]:
        return self.amqp.snapshot(), self.redis.snapshot(), self.service.tasks.snapshot()

    async def _quiet(self) -> tuple[Counter[str], Counter[str], Counter[str]]:
        """Once nothing has moved for a few polls: the command's work is over (background work is
        pushed beyond the test's length by ``QUIET_ENV``)."""
        last, still = self._snapshot(), 0
        while still < 3:
            await asyncio.sleep(0.03)
            current = self._snapshot()
            still = still + 1 if current == last else 0
            last = current
        return last

    async def cost(self, room: str, sender: str, payload: dict[str, Any], role: str, message_id: str) -> Cost:
        amqp, redis, tasks = self._mark
        await self.emulator.clear_calls()
        await self.client.send(room, sender, payload, role=role, message_id=message_id)
        for _ in range(2000):  # 20 s
            if self.amqp.snapshot()["out.basic.ack"] > amqp["out.basic.ack"]:
                break
            await asyncio.sleep(0.01)
        self._mark = amqp_after, redis_after, tasks_after = await self._quiet()
        calls = Counter(await self.emulator.calls())
        cost = Cost(amqp_after - amqp, redis_after - redis, tasks_after - tasks, calls)
        # What the service published is what a client receives, each event answering this command.
        published = cost.amqp["out.basic.publish"]
        if published:
            await self.client.wait_for(lambda e: e.correlation_id == message_id, count=published)
        assert cost.amqp["out.basic.ack"] == 1, cost.amqp  # the command itself, acknowledged once
        return cost

    async def join_room(self, room: str, size: int) -> list[str]:
        """``size`` participants connected to LiveKit with a microphone, each joined through the
        service (the first as moderator)."""
        identities = await self.emulator.bulk(room, size, "p", ["microphone"])
        sent = set(
            await asyncio.gather(
                *(
                    self.client.send(
                        room, identity, {"action": "join"}, role="moderator" if n == 0 else "user"
                    )
                    for n, identity in enumerate(identities)
                )
            )
        )
        await self.client.wait_for(lambda e: e.correlation_id in sent, count=size, timeout=60)
        return identities

    async def rooms(self, sizes: Sequence[int]) -> list[tuple[str, list[str]]]:
        """New rooms of these sizes, joined at once (a room's commands run one at a time, different
        rooms' side by side): each room's name and participants."""
        names = [f"rt-{uuid.uuid4().hex[:12]}" for _ in sizes]
        joined = await asyncio.gather(
            *(self.join_room(n, size) for n, size in zip(names, sizes, strict=True))
        )
        self._mark = await self._quiet()
        return list(zip(names, joined, strict=True))

    async def round(self, room: str, identities: list[str]) -> dict[str, Cost]:
        """Every command once in ``room``."""
        senders = {
            "moderator": identities[0],
            "target": identities[1],
            "leaver": identities[2],
            "newcomer": f"newcomer-{uuid.uuid4().hex[:6]}",
        }
        costs: dict[str, Cost] = {}
        message_id = ""
        for step in STEPS:
            payload = {
                key: [senders.get(v, v) for v in value]
                if isinstance(value, list)
                else senders.get(value, value)
                for key, value in step.payload.items()
            }
            message_id = message_id if step.again else uuid.uuid4().hex
            costs[step.row] = await self.cost(room, senders[step.sender], payload, step.role, message_id)
            answers = [event.payload for event in self.client.events if event.correlation_id == message_id]
            if step.again:  # the copy is acknowledged and not answered: the one answer is the first's
                assert len(answers) == 1, answers
            if step.error is not None:
                assert [(a.get("message"), a.get("error")) for a in answers] == [("error", step.error)], (
                    answers
                )
        return costs


@pytest.fixture(scope="module")
def own_emulator() -> Iterator[EmulatorProcess]:
    """An emulator of the test's own: its call log holds this service's calls only."""
    process = EmulatorProcess()
    yield process
    process.stop()


Figures = dict[tuple[str, int], dict[str, Any]]


async def measure(store: str, livekit_url: str) -> Figures:
    """Each command's figures with the state in ``store`` ("memory" or "redis"), after a warm-up round;
    every round is run twice and must give the same counts."""
    names = Names()
    amqp, redis = AmqpCounter(), RedisCounter()
    with (
        CountingProxy(AMQP_URL, 5672, amqp) as amqp_proxy,
        CountingProxy(REDIS_URL, 6379, redis) as redis_proxy,
    ):
        environ = {
            "AMQP_URL": amqp_proxy.url,
            "LIVEKIT_URL": livekit_url,
            "LIVEKIT_API_KEY": API_KEY,
            "LIVEKIT_API_SECRET": API_SECRET,
            "LIVEKIT_PUBLIC_URL": "wss://livekit.example.test",
            **names.environment(PARTITIONS),
            "SIGNALING_HTTP_HOST": "127.0.0.1",
            "SIGNALING_HTTP_PORT": "0",
            **QUIET_ENV,
            **({"REDIS_URL": redis_proxy.url} if store == "redis" else {}),
        }
        try:
            async with SignalingClient(names) as client, Emulator(livekit_url) as emulator:
                service = await asyncio.to_thread(InProcessService(environ).start)
                try:
                    harness = Harness(service, amqp, redis, client, emulator)
                    # A warm-up room first (connections, pools and caches settle), then each size twice.
                    rooms = await harness.rooms([SIZES[0], *SIZES, *SIZES])
                    await harness.round(*rooms[0])
                    costs = [await harness.round(*room) for room in rooms[1:]]
                    runs = [
                        dict(zip(SIZES, costs[:2], strict=True)),
                        dict(zip(SIZES, costs[2:], strict=True)),
                    ]
                finally:
                    await asyncio.to_thread(service.stop)
        finally:
            await delete_topology(names, PARTITIONS)
            delete_redis_keys(names.redis_prefix)
    figures: Figures = {}
    for size in SIZES:
        for action, cost in runs[0][size].items():
            first, second = cost.figures(), runs[1][size][action].figures()
            assert first == second, f"{action} in a room of {size} ({store}): {first} then {second}"
            figures[action, size] = first
    return figures


Row = dict[str, int]  # count name (a heading, or "LiveKit <method>") -> count
Table = dict[tuple[str, int], Row]


def table_of(memory: Figures, redis: Figures) -> Table:
    table: Table = {}
    for key in memory:
        row: Row = {}
        for heading, store, figure in COLUMNS:
            value = (memory if store == "memory" else redis)[key][figure]
            if isinstance(value, dict):  # a count per name: "<heading>: <name>"
                row.update({f"{heading}: {name}": count for name, count in value.items()})
            else:
                row[heading] = value
        table[key] = row
    return table


def render(table: Table) -> str:
    headings = ["command", "room", *(heading for heading, _, _ in COLUMNS)]
    lines = ["| " + " | ".join(headings) + " |", "|" + " --- |" * len(headings)]
    for (action, size), row in table.items():
        cells = [f"`{action}`", f"{size:,}"]
        for heading, _, _ in COLUMNS:
            if heading in row:
                cells.append(f"{row[heading]:,}")
                continue
            named = [
                f"{name.removeprefix(heading + ': ')} {n:,}"
                for name, n in row.items()
                if name.startswith(heading + ": ")
            ]
            cells.append(", ".join(named) or "none")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse(markdown: str) -> Table:
    """The table as ``render`` wrote it."""
    table: Table = {}
    for line in markdown.splitlines()[2:]:
        action, size, *cells = (cell.strip() for cell in line.strip().strip("|").split("|"))
        row: Row = {}
        for (heading, _, _), cell in zip(COLUMNS, cells, strict=True):
            if cell.replace(",", "").isdigit():
                row[heading] = int(cell.replace(",", ""))
                continue
            for item in filter(None, cell.replace("none", "").split(", ")):
                name, count = item.split()
                row[f"{heading}: {name}"] = int(count.replace(",", ""))
        table[action.strip("`"), int(size.replace(",", ""))] = row
    return table


def documented() -> tuple[str, str, str]:
    """The doc before the table, the table, the doc after it."""
    text = DOC.read_text()
    before, _, rest = text.partition(BEGIN + "\n")
    table, _, after = rest.partition(END)
    return before, table.strip(), after


def differences(old: Table, new: Table) -> tuple[list[str], list[str]]:
    """What grew and what shrank, one line each."""
    grown: list[str] = []
    shrunk: list[str] = []
    for key in sorted(old.keys() | new.keys(), key=lambda k: (k[1], k[0])):
        action, size = key
        old_row, new_row = old.get(key, {}), new.get(key, {})
        for count in sorted(old_row.keys() | new_row.keys()):
            before, after = old_row.get(count, 0), new_row.get(count, 0)
            line = f"{action}, room of {size}: {count} {before} in the table, {after} measured"
            if after > before:
                grown.append(line)
            elif after < before:
                shrunk.append(line)
    return grown, shrunk


async def test_round_trips_of_every_command(own_emulator: EmulatorProcess) -> None:
    memory = await measure("memory", own_emulator.url)
    redis = await measure("redis", own_emulator.url)
    for key, figures in memory.items():
        for figure in WIRE_FIGURES:
            assert figures[figure] == redis[key][figure], (
                f"{key}: {figure} with the state in memory {figures[figure]}, in Redis {redis[key][figure]}"
            )
    measured = table_of(memory, redis)
    before, table, after = documented()
    if UPDATE:
        DOC.write_text(f"{before}{BEGIN}\n{render(measured)}\n{END}{after}")
        return
    grown, shrunk = differences(parse(table), measured)
    origins = "\n".join(
        f"tasks of {action} in a room of {size} ({store}): {figures[action, size]['task_origins']}"
        for store, figures in (("memory", memory), ("Redis", redis))
        for action, size in figures
        if any(line.startswith(f"{action}, room of {size}: tasks") for line in grown + shrunk)
    )
    regenerate = (
        f"UPDATE_ROUND_TRIPS=1 .venv/bin/python -m pytest -n 0 {Path(__file__).relative_to(DOC.parents[1])}"
    )
    assert not grown, (
        "counts grew: a growth needs its reason in the commit message, with the table regenerated by "
        f"`{regenerate}`\ngrew:\n  "
        + "\n  ".join(grown)
        + ("\nshrank:\n  " + "\n  ".join(shrunk) if shrunk else "")
        + f"\n{origins}"
    )
    assert not shrunk, (
        f"counts shrank: regenerate the table with `{regenerate}` so that it stays true\nshrank:\n  "
        + "\n  ".join(shrunk)
        + f"\n{origins}"
    )


def _amqp_frame(kind: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", kind, 1, len(payload)) + payload + b"\xce"


def _resp(*words: str) -> bytes:
    return f"*{len(words)}\r\n".encode() + b"".join(f"${len(w)}\r\n{w}\r\n".encode() for w in words)


@pytest.mark.parametrize("chunk", [1, 3, 1 << 16])
def test_counts_do_not_depend_on_how_the_stream_is_split(chunk: int) -> None:
    publish = _amqp_frame(1, struct.pack(">HH", 60, 40) + b"...")
    stream = b"AMQP\x00\x00\x09\x01" + publish + _amqp_frame(2, b"h") + _amqp_frame(3, b"b")
    stream += _amqp_frame(8, b"")  # a heartbeat: not counted
    amqp, connection = AmqpCounter(), object()
    for start in range(0, len(stream), chunk):
        amqp.observe(connection, True, stream[start : start + chunk])
    assert amqp.snapshot() == Counter(
        {"out.method": 1, "out.basic.publish": 1, "out.header": 1, "out.body": 1}
    )

    redis, connection = RedisCounter(), object()
    conversation: list[tuple[bool, bytes]] = [
        (True, _resp("GET", "k")),
        (False, b"$-1\r\n"),
        (True, _resp("MULTI") + _resp("SET", "k", "v") + _resp("EXEC")),  # a pipeline: one round trip
        (False, b"+OK\r\n+QUEUED\r\n*1\r\n+OK\r\n"),
        (True, _resp("EVAL", "return 1", "0")),
        (False, b":1\r\n"),
    ]
    for to_server, data in conversation:
        for start in range(0, len(data), chunk):
            redis.observe(connection, to_server, data[start : start + chunk])
    counts = redis.snapshot()
    assert (counts["commands"], counts["round_trips"]) == (5, 3)
    assert counts["command.SET"] == 1 and counts["command.EVAL"] == 1
