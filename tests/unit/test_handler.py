"""The domain handler against small fakes of its ports: permission checks before any call, the policy
of who may publish what, and what each command answers."""

from __future__ import annotations

import json

import msgspec
import pytest

from livekit_signaling.domain.handler import CommandHandler, ConnectionUrls
from livekit_signaling.domain.permissions import ALL_SOURCES, PublishPolicy
from livekit_signaling.domain.ports import ConnectedParticipant
from livekit_signaling.schemas import codec
from livekit_signaling.schemas.commands import Envelope
from livekit_signaling.store.memory import MemoryStateStore
from tests.unit.fakes import FakeLiveKit, fake_handler


@pytest.fixture
def livekit() -> FakeLiveKit:
    return FakeLiveKit()


@pytest.fixture
def handler(livekit: FakeLiveKit) -> CommandHandler:
    return fake_handler(
        MemoryStateStore(dedup_window_seconds=60, room_idle_seconds=3600),
        livekit=livekit,
        policy=PublishPolicy(screen_share_requires_permission=True),
        urls=ConnectionUrls(public_url="wss://public", service_url="http://private"),
    )


async def run(
    handler: CommandHandler,
    participant: str,
    payload: dict[str, object],
    *,
    role: str = "user",
    kind: str = "user",
    room: str = "room-1",
) -> list[dict[str, object]]:
    envelope = Envelope(
        room=room,
        participant=participant,
        role=role,
        kind=kind,  # type: ignore[arg-type]
        payload=msgspec.Raw(json.dumps(payload).encode()),
    )
    result = await handler.handle(envelope, codec.decode_command(envelope.payload))
    return [json.loads(codec.encode(event)) for event in result.events]


MODERATOR_PAYLOADS = [
    {"action": "force_mute", "participants": ["a"]},
    {"action": "grant_screen_share_permission", "participants": ["a"]},
    {"action": "revoke_screen_share_permission", "participants": ["a"]},
    {"action": "enable_microphone_restrictions", "unrestricted_participants": ["a"]},
    {"action": "disable_microphone_restrictions"},
]
ALL_PAYLOADS = [
    *MODERATOR_PAYLOADS,
    {"action": "create_new_access_token"},
    {"action": "request_popout_stream_access_token"},
    {"action": "join"},
    {"action": "leave"},
    {"action": "close_room"},
]


@pytest.mark.parametrize("role", ["moderator", "user", "guest"])
@pytest.mark.parametrize("payload", ALL_PAYLOADS, ids=lambda p: str(p["action"]))
async def test_every_command_for_every_role(
    handler: CommandHandler, livekit: FakeLiveKit, payload: dict[str, object], role: str
) -> None:
    events = await run(handler, "sender", payload, role=role)
    refused = [
        {
            "room": "room-1",
            "participant": "sender",
            "payload": {"message": "error", "error": "insufficient_permissions"},
        }
    ]
    if payload in MODERATOR_PAYLOADS and role != "moderator":
        assert events == refused
        assert livekit.calls == []  # checked before anything was called
    else:
        assert events != refused


async def test_token_policy_follows_restrictions_and_grants(handler: CommandHandler) -> None:
    await run(handler, "mod", {"action": "join"}, role="moderator")
    await run(
        handler,
        "mod",
        {"action": "enable_microphone_restrictions", "unrestricted_participants": ["u1"]},
        role="moderator",
    )
    await run(
        handler, "mod", {"action": "grant_screen_share_permission", "participants": ["mod"]}, role="moderator"
    )

    def sources(events: list[dict[str, object]]) -> list[str]:
        payload = events[0]["payload"]
        assert isinstance(payload, dict)
        return list(json.loads(payload["credentials"]["token"])["sources"])

    assert sources(await run(handler, "mod", {"action": "join"}, role="moderator")) == sorted(ALL_SOURCES)
    assert sources(await run(handler, "u1", {"action": "join"})) == ["camera", "microphone"]
    assert sources(await run(handler, "u2", {"action": "join"})) == ["camera"]
    assert sources(await run(handler, "sip", {"action": "join"}, kind="sip")) == []
    await run(
        handler, "mod", {"action": "grant_screen_share_permission", "participants": ["u2"]}, role="moderator"
    )
    assert sources(await run(handler, "u2", {"action": "join"})) == [
        "camera",
        "screen_share",
        "screen_share_audio",
    ]
    recorder = await run(handler, "rec", {"action": "join"}, kind="recorder")
    token = json.loads(recorder[0]["payload"]["credentials"]["token"])  # type: ignore[index]
    assert token["hidden"] is True and token["sources"] == [] and token["data"] is False
    assert recorder[0]["payload"]["credentials"]["service_url"] == "http://private"  # type: ignore[index]


async def test_popout_identities_are_derived_and_removed_on_leave(
    handler: CommandHandler, livekit: FakeLiveKit
) -> None:
    await run(handler, "p", {"action": "join"})
    first = await run(handler, "p", {"action": "request_popout_stream_access_token"})
    second = await run(handler, "p", {"action": "request_popout_stream_access_token"})
    identities = [json.loads(e[0]["payload"]["token"])["identity"] for e in (first, second)]  # type: ignore[index]
    assert identities == ["p.popout1", "p.popout2"]
    livekit.calls.clear()
    assert await run(handler, "p", {"action": "leave"}) == []
    assert sorted(livekit.calls) == [("remove_participant", i) for i in ["p", "p.popout1", "p.popout2"]]


async def test_unchanged_permissions_cost_no_update(handler: CommandHandler, livekit: FakeLiveKit) -> None:
    await run(handler, "mod", {"action": "join"}, role="moderator")
    livekit.connected["mod"] = ConnectedParticipant("mod", ALL_SOURCES, (), None)
    livekit.connected["x"] = ConnectedParticipant("x", frozenset({"camera", "microphone"}), (), None)
    livekit.calls.clear()
    await run(
        handler,
        "mod",
        {"action": "enable_microphone_restrictions", "unrestricted_participants": []},
        role="moderator",
    )
    updates = [c for c in livekit.calls if c[0] == "set_publish_sources"]
    # The moderator keeps everything; "x" is not in the roster, so only its microphone goes.
    assert updates == [("set_publish_sources", "x", "camera")]


async def test_livekit_unavailable_becomes_an_error_event(
    handler: CommandHandler, livekit: FakeLiveKit
) -> None:
    livekit.unavailable = True
    events = await run(handler, "p", {"action": "join"})
    assert events[0]["payload"] == {"message": "error", "error": "livekit_unavailable"}
