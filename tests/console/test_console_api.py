"""The console's JSON and SSE endpoints, served by ``livekit-signaling dev`` against the real RabbitMQ and
the dev process's own emulator."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aio_pika
import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from livekit_signaling.console import Console
from livekit_signaling.domain.state import RoomState, RosterEntry
from testkit.processes import AMQP_URL, DevProcess

JSON_HEADERS = {"Content-Type": "application/json"}


class ConsoleApi:
    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base.rstrip("/")

    async def post(self, path: str, body: Any, *, expect: int = 200, **kwargs: Any) -> dict[str, Any]:
        async with self.session.post(f"{self.base}{path}", data=json.dumps(body), **kwargs) as response:
            data: dict[str, Any] = await response.json(content_type=None)
            assert response.status == expect, (response.status, data)
            return data

    async def command(
        self, room: str, participant: str, payload: dict[str, Any], *, role: str = "user", kind: str = "user"
    ) -> dict[str, Any]:
        envelope = {"room": room, "participant": participant, "role": role, "kind": kind, "payload": payload}
        return await self.post("/console/commands", envelope, headers=JSON_HEADERS)

    async def client(self, action: str, room: str, participant: str, **extra: Any) -> dict[str, Any]:
        body = {"room": room, "participant": participant, **extra}
        return await self.post(f"/console/clients/{action}", body, headers=JSON_HEADERS)

    async def snapshot(self) -> dict[str, Any]:
        async with self.session.get(f"{self.base}/console/snapshot") as response:
            assert response.status == 200
            data: dict[str, Any] = await response.json()
            return data

    async def wait_room(
        self, room: str, predicate: Callable[[dict[str, Any]], bool], *, timeout: float = 10.0
    ) -> dict[str, Any]:
        """The room's view once ``predicate`` holds for it (the service acts asynchronously)."""
        deadline = time.monotonic() + timeout
        view: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            view = next((r for r in (await self.snapshot())["rooms"] if r["name"] == room), None)
            if view is not None and predicate(view):
                return view
            await asyncio.sleep(0.05)
        raise AssertionError(f"room {room} never matched; last view: {json.dumps(view)[:3000]}")

    async def wait_answers(
        self, message_id: str, count: int, *, timeout: float = 10.0
    ) -> list[dict[str, Any]]:
        """The answers the console recorded for a command, once there are ``count`` (they come back
        through the broker, after the service changed LiveKit: a view can show the change first)."""
        deadline = time.monotonic() + timeout
        answers: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            commands = (await self.snapshot())["commands"]
            command = next((c for c in commands if c["message_id"] == message_id), None)
            answers = command["answers"] if command is not None else []
            if len(answers) >= count:
                return answers
            await asyncio.sleep(0.05)
        raise AssertionError(f"{len(answers)} answers to {message_id} recorded, not {count}: {answers}")


def rows(view: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["identity"]: row for row in view["participants"]}


def sources(row: dict[str, Any]) -> list[str]:
    return [track["source"] for track in row["livekit"]["tracks"]] if row["livekit"] else []


@pytest.fixture
async def api(dev: DevProcess) -> AsyncIterator[ConsoleApi]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        yield ConsoleApi(session, dev.console_url)


async def sse(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, Any]]:
    """(event name, decoded data) of each server-sent event; comment lines are skipped."""
    kind, data = "message", ""
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if not line:
            if data:
                yield kind, json.loads(data)
            kind, data = "message", ""
        elif line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data += line.removeprefix("data: ")


async def test_page_and_its_files_are_served_beside_the_service_endpoints(
    api: ConsoleApi, dev: DevProcess
) -> None:
    assert f"console: {dev.console_url}" in dev.logs()  # what `bash scripts/dev` prints
    async with api.session.get(f"{api.base}/") as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        page = await response.text()
    assert 'id="command-form"' in page
    for path, content_type in (
        ("/console/console.js", "text/javascript"),
        ("/console/console.css", "text/css"),
    ):
        assert path in page
        async with api.session.get(f"{api.base}{path}") as response:
            assert (response.status, response.content_type) == (200, content_type)
            assert len(await response.read()) > 1000
    for missing in ("/console/index.html", "/console/../app/cli.py", "/console/nothing.js"):
        async with api.session.get(f"{api.base}{missing}") as response:
            assert response.status == 404, missing
    async with api.session.get(f"{api.base}/readyz") as response:
        assert response.status == 200
    async with api.session.get(f"{api.base}/metrics") as response:
        assert "livekit_signaling_commands_total" in await response.text()


async def test_stream_resets_then_carries_the_command_its_answer_and_the_rooms(
    api: ConsoleApi, room: str
) -> None:
    async with api.session.get(f"{api.base}/console/stream") as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        messages = sse(response)
        kind, reset = await anext(messages)
        assert kind == "reset"
        assert reset["amqp_connected"] is True
        assert {"rooms", "commands", "events", "livekit_error"} <= reset.keys()

        sent = await api.command(room, "alice", {"action": "join"}, role="guest", kind="guest")
        assert sent["routing_key"] == f"room.{room}"
        assert sent["body"]["payload"] == {"action": "join"}
        message_id = sent["message_id"]

        seen: dict[str, Any] = {}
        async with asyncio.timeout(10):
            while not {"event", "answered", "rooms"} <= seen.keys():
                kind, data = await anext(messages)
                if kind == "event" and data["correlation_id"] == message_id:
                    seen["event"] = data
                elif kind == "command" and data["message_id"] == message_id and data["answers"]:
                    seen["answered"] = data
                elif kind == "rooms" and any(r["name"] == room and r["participants"] for r in data["rooms"]):
                    seen["rooms"] = data

    event = seen["event"]
    assert (event["room"], event["recipient"], event["message"]) == (room, "alice", "join_success")
    assert event["routing_key"] == f"room.{room}.participant.alice"
    assert event["body"]["payload"]["credentials"]["token"]
    assert [a["message"] for a in seen["answered"]["answers"]] == ["join_success"]
    view = next(r for r in seen["rooms"]["rooms"] if r["name"] == room)
    alice = rows(view)["alice"]
    assert alice["roster"] == {"role": "guest", "kind": "guest", "popouts": 0}
    assert alice["livekit"] is None
    assert alice["has_token"] is True
    assert view["livekit"] is not None  # join creates the LiveKit room
    assert view["state"]["microphone_restrictions"] is None


async def test_simulated_clients_meet_restrictions_as_livekit_enforces_them(
    api: ConsoleApi, room: str
) -> None:
    await api.command(room, "mod", {"action": "join"}, role="moderator")
    for user in ("a", "b"):
        await api.command(room, user, {"action": "join"})
    await api.wait_room(room, lambda v: all(rows(v).get(p, {}).get("has_token") for p in ("mod", "a", "b")))
    for participant in ("mod", "a", "b"):
        connected = await api.client("connect", room, participant)
        assert connected == {
            "ok": True,
            "outcome": "connected with the token from its last join_success / credentials",
        }
        published = await api.client("publish", room, participant, source="microphone")
        assert published == {"ok": True, "outcome": "published microphone"}
    view = await api.wait_room(room, lambda v: all(sources(r) == ["microphone"] for r in v["participants"]))
    assert rows(view)["b"]["outcome"].endswith("published microphone")

    enabled = await api.command(
        room, "mod", {"action": "enable_microphone_restrictions", "unrestricted_participants": ["a"]},
        role="moderator",
    )  # fmt: skip
    view = await api.wait_room(room, lambda v: sources(rows(v)["b"]) == [])
    assert view["state"]["microphone_restrictions"] == ["a"]
    b, a, mod = rows(view)["b"], rows(view)["a"], rows(view)["mod"]
    assert "microphone" not in b["livekit"]["permission"]["can_publish_sources"]
    assert b["livekit"]["permission"]["can_publish"] is True
    assert sources(a) == sources(mod) == ["microphone"]
    recorded = await api.wait_answers(enabled["message_id"], 3)
    answers = {(answer["recipient"], answer["message"]) for answer in recorded}
    assert answers == {(p, "microphone_restrictions_enabled") for p in ("mod", "a", "b")}

    # b's client tries to get its microphone back: there is no track to unmute, a new one is refused.
    refused = await api.client("unmute_microphone", room, "b")
    assert refused == {"ok": False, "outcome": "LiveKit refused: participant 'b' may not publish microphone"}
    assert (await api.client("publish", room, "b", source="camera"))["ok"] is True

    # A force_mute holds only until the client unmutes itself: LiveKit lets it.
    await api.command(room, "mod", {"action": "force_mute", "participants": ["a"]}, role="moderator")
    view = await api.wait_room(room, lambda v: rows(v)["a"]["livekit"]["tracks"][0]["muted"])
    assert await api.client("unmute_microphone", room, "a") == {"ok": True, "outcome": "unmuted"}
    await api.wait_room(room, lambda v: not rows(v)["a"]["livekit"]["tracks"][0]["muted"])

    track = rows(view)["a"]["livekit"]["tracks"][0]["sid"]
    assert (await api.client("unpublish", room, "a", track_sid=track))["ok"] is True
    assert (await api.client("disconnect", room, "a"))["ok"] is True
    view = await api.wait_room(room, lambda v: rows(v)["a"]["livekit"] is None)
    assert rows(view)["a"]["roster"] is not None  # LiveKit dropped it, the service still has it


async def test_without_webhooks_the_page_shows_the_drift_reconciliation_repairs(
    api: ConsoleApi, room: str
) -> None:
    assert (await api.post("/console/livekit/webhooks", {"enabled": False}, headers=JSON_HEADERS))["ok"]
    try:
        assert (await api.snapshot())["webhooks"] is False
        await api.command(room, "mod", {"action": "join"}, role="moderator")
        await api.command(room, "late", {"action": "join"})
        await api.wait_room(room, lambda v: rows(v).get("late", {}).get("has_token", False))
        await api.command(
            room, "mod", {"action": "enable_microphone_restrictions", "unrestricted_participants": []},
            role="moderator",
        )  # fmt: skip
        await api.wait_room(room, lambda v: v["state"]["microphone_restrictions"] == [])
        # The client connects with the token of its join_success, minted before the restriction.
        assert (await api.client("connect", room, "late"))["ok"] is True

        def repaired(times: int) -> Callable[[dict[str, Any]], bool]:
            def check(view: dict[str, Any]) -> bool:
                late = rows(view)["late"]
                return len(view["repairs"]) == times and late["livekit"] is not None and late["drift"] == []

            return check

        view = await api.wait_room(room, repaired(1))
        [repair] = view["repairs"]
        assert (repair["identity"], repair["drift"], repair["sources"]) == (
            "late",
            ["microphone"],
            ["camera", "screen_share", "screen_share_audio"],
        )
        assert "microphone" not in rows(view)["late"]["livekit"]["permission"]["can_publish_sources"]

        # LiveKit restarts and loses the room; the client connects again with the token it holds.
        forgot = await api.post("/console/livekit/forget", {"room": room}, headers=JSON_HEADERS)
        assert forgot == {"ok": True, "outcome": f"LiveKit restarted and lost {room}"}
        await api.wait_room(room, lambda v: rows(v)["late"]["livekit"] is None)
        assert (await api.client("connect", room, "late"))["ok"] is True
        view = await api.wait_room(room, repaired(2))
        assert [r["identity"] for r in view["repairs"]] == ["late", "late"]
    finally:
        await api.post("/console/livekit/webhooks", {"enabled": True}, headers=JSON_HEADERS)


async def test_popout_connects_with_its_own_token_hidden_and_publishing_nothing(
    api: ConsoleApi, room: str
) -> None:
    await api.command(room, "carol", {"action": "join"})
    await api.command(room, "carol", {"action": "request_popout_stream_access_token"})
    view = await api.wait_room(room, lambda v: rows(v).get("carol.popout1", {}).get("has_token", False))
    assert rows(view)["carol.popout1"]["popout_of"] == "carol"
    connected = await api.client("connect", room, "carol.popout1")
    assert connected["ok"] is True
    view = await api.wait_room(room, lambda v: rows(v)["carol.popout1"]["livekit"] is not None)
    permission = rows(view)["carol.popout1"]["livekit"]["permission"]
    assert (permission["hidden"], permission["can_publish"]) == (True, False)
    refused = await api.client("publish", room, "carol.popout1", source="camera")
    assert refused["ok"] is False
    assert refused["outcome"].startswith("LiveKit refused")


async def test_closed_room_leaves_the_view(api: ConsoleApi, room: str) -> None:
    await api.command(room, "dave", {"action": "join"})
    await api.wait_room(room, lambda v: "dave" in rows(v))
    await api.command(room, "dave", {"action": "close_room"})
    deadline = time.monotonic() + 10
    while any(r["name"] == room for r in (await api.snapshot())["rooms"]):
        assert time.monotonic() < deadline, "the closed room is still shown"
        await asyncio.sleep(0.05)


async def test_a_console_started_later_asks_for_fresh_credentials(
    api: ConsoleApi, dev: DevProcess, room: str
) -> None:
    """A console that never saw erin's join_success gets a token as a client would: it sends
    create_new_access_token as erin, with the role and kind from the roster."""
    await api.command(room, "erin", {"action": "join"}, role="moderator", kind="sip")
    await api.wait_room(room, lambda v: "erin" in rows(v))

    async def load_room(name: str) -> RoomState:
        return RoomState(
            participants={"erin": RosterEntry(role="moderator", kind="sip")} if name == room else {}
        )

    late = Console(
        load_room=load_room,
        amqp_urls=[AMQP_URL],
        command_exchange=dev.names.command_exchange,
        event_exchange=dev.names.event_exchange,
        emulator_url=dev.livekit_url,
    )
    app = web.Application()
    late.install(app)
    async with TestServer(app, host="127.0.0.1") as server:
        other = ConsoleApi(api.session, str(server.make_url("/")))
        deadline = time.monotonic() + 10
        while not (await other.snapshot())["amqp_connected"]:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        connected = await other.client("connect", room, "erin")
        assert connected == {
            "ok": True,
            "outcome": "connected with fresh credentials (create_new_access_token)",
        }
        commands = (await other.snapshot())["commands"]
    assert [c["body"]["payload"]["action"] for c in commands] == ["create_new_access_token"]
    assert commands[0]["body"]["role"] == "moderator"
    assert commands[0]["body"]["kind"] == "sip"
    assert [a["message"] for a in commands[0]["answers"]] == ["credentials"]
    view = await api.wait_room(room, lambda v: rows(v)["erin"]["livekit"] is not None)
    assert rows(view)["erin"]["livekit"]["permission"]["can_publish_sources"] == ["microphone"]


async def test_an_invalid_envelope_is_published_as_it_is_and_dead_lettered(
    api: ConsoleApi, dev: DevProcess, room: str
) -> None:
    """The form takes any JSON object with a room, so that a developer can watch the service refuse it."""
    published = json.dumps(
        {"room": room, "participant": "x", "payload": {"action": "join"}, "surprise": [1, 2]}, indent=1
    ).encode()
    async with api.session.post(
        f"{api.base}/console/commands", data=published, headers=JSON_HEADERS
    ) as response:
        assert response.status == 200
        sent = await response.json()
    assert sent["routing_key"] == f"room.{room}"
    assert sent["body"] == json.loads(published)
    async with await aio_pika.connect(AMQP_URL) as connection:
        queue = await (await connection.channel()).get_queue(dev.names.dead_letter)
        deadline = time.monotonic() + 10
        # Byte for byte as the form sent it (the room is this test's own).
        while (message := await queue.get(no_ack=True, fail=False)) is None or message.body != published:
            assert time.monotonic() < deadline, "the invalid envelope was not dead-lettered"
            await asyncio.sleep(0.05)
    assert str((message.headers or {}).get("x-signaling-reason")).startswith("malformed_envelope")


async def test_bad_requests_are_refused_with_a_reason(api: ConsoleApi, room: str) -> None:
    envelope = {"room": room, "participant": "x", "role": "user", "payload": {"action": "join"}}
    refused = await api.post(
        "/console/commands", envelope, expect=415, headers={"Content-Type": "text/plain"}
    )
    assert "application/json" in refused["error"]
    cross_site = {**JSON_HEADERS, "Origin": "http://attacker.example"}
    assert (
        "cross-origin"
        in (await api.post("/console/commands", envelope, expect=403, headers=cross_site))["error"]
    )
    no_room = await api.post("/console/commands", {"participant": "x"}, expect=400, headers=JSON_HEADERS)
    assert "room" in no_room["error"]
    assert "object" in (await api.post("/console/commands", [1], expect=400, headers=JSON_HEADERS))["error"]
    async with api.session.post(f"{api.base}/console/commands", data=b"{", headers=JSON_HEADERS) as response:
        assert response.status == 400
    body = {"room": room, "participant": "x"}
    assert (await api.post("/console/clients/dance", body, expect=404, headers=JSON_HEADERS))["error"]
    bad_source = await api.post("/console/clients/publish", {**body, "source": "hologram"}, expect=400,
                                headers=JSON_HEADERS)  # fmt: skip
    assert "source" in bad_source["error"]
    stranger = await api.post("/console/clients/connect", body, expect=400, headers=JSON_HEADERS)
    assert "send a join" in stranger["error"]
    unknown = await api.client("unmute_microphone", room, "x")
    assert unknown == {"ok": False, "outcome": "not connected"}
    # Nothing refused was published.
    assert not [c for c in (await api.snapshot())["commands"] if c["body"].get("room") == room]
