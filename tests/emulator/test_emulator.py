"""The LiveKit server, driven through the real, unmodified livekit-api client."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import jwt
import pytest
from aiohttp import web
from livekit.api import (
    AccessToken,
    LiveKitAPI,
    ServerError,
    TokenVerifier,
    VideoGrants,
    WebhookReceiver,
)
from livekit.protocol.models import ParticipantInfo, ParticipantPermission, TrackSource, TrackType
from livekit.protocol.room import (
    CreateRoomRequest,
    DeleteRoomRequest,
    ListParticipantsRequest,
    ListRoomsRequest,
    MuteRoomTrackRequest,
    RoomParticipantIdentity,
    UpdateParticipantRequest,
    UpdateRoomMetadataRequest,
)
from livekit.protocol.webhook import WebhookEvent

from livekit_signaling.emulator import EmulatorFault, LiveKitEmulator

KEY = "devkey"
# PyJWT warns about HMAC keys shorter than 32 bytes.
SECRET = "emulator-test-secret-0123456789abcdef"
MUTE_DELAY = 0.2
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def server() -> AsyncIterator[LiveKitEmulator]:
    emu = LiveKitEmulator(KEY, SECRET, unknown_participant_mute_delay=MUTE_DELAY)
    await emu.start()
    yield emu
    await emu.stop()


@pytest.fixture
async def lkapi(server: LiveKitEmulator) -> AsyncIterator[LiveKitAPI]:
    api = LiveKitAPI(server.url, KEY, SECRET)
    yield api
    await api.aclose()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


def participant_token(
    room: str,
    identity: str,
    *,
    sources: list[str] | None = None,
    hidden: bool | None = None,
    can_publish: bool = True,
    secret: str = SECRET,
) -> str:
    grants = VideoGrants(
        room_join=True,
        room=room,
        can_publish=can_publish,
        can_subscribe=True,
        can_publish_data=True,
        can_publish_sources=sources,
        hidden=hidden,
    )
    return AccessToken(KEY, secret).with_identity(identity).with_name(identity).with_grants(grants).to_jwt()


def admin_token(room: str) -> str:
    return AccessToken(KEY, SECRET).with_grants(VideoGrants(room_admin=True, room=room)).to_jwt()


def room_list_token(*, expired_seconds_ago: int) -> str:
    """A token that may list rooms, whose expiry passed ``expired_seconds_ago`` seconds ago."""
    now = int(time.time())
    claims = {"iss": KEY, "sub": "", "nbf": now - 600, "exp": now - expired_seconds_ago}
    return jwt.encode({**claims, "video": {"roomList": True}}, SECRET, algorithm="HS256")


async def twirp_status(
    http: aiohttp.ClientSession, url: str, method: str, body: bytes, headers: dict[str, str]
) -> tuple[int, str, str]:
    async with http.post(f"{url}/twirp/livekit.RoomService/{method}", data=body, headers=headers) as resp:
        return resp.status, resp.content_type, await resp.text()


# -- auth ------------------------------------------------------------------------------------------


async def test_missing_or_malformed_authorization_is_401(
    server: LiveKitEmulator, http: aiohttp.ClientSession
) -> None:
    body = ListRoomsRequest().SerializeToString()
    proto = {"Content-Type": "application/protobuf"}
    # No header: LiveKit's middleware lets it through without grants, the grant check refuses it.
    status, ctype, text = await twirp_status(http, server.url, "ListRooms", body, proto)
    assert status == 401
    assert ctype == "application/json"
    assert '"unauthenticated"' in text
    # A header that is not "Bearer ...": the middleware answers in plain text.
    status, ctype, _ = await twirp_status(
        http, server.url, "ListRooms", body, {**proto, "Authorization": "Token abc"}
    )
    assert (status, ctype) == (401, "text/plain")
    status, ctype, _ = await twirp_status(
        http, server.url, "ListRooms", body, {**proto, "Authorization": "Bearer not-a-jwt"}
    )
    assert (status, ctype) == (401, "text/plain")


async def test_bad_secret_unknown_key_and_expired_token_are_plain_401(server: LiveKitEmulator) -> None:
    expired = room_list_token(expired_seconds_ago=120)
    clients = [
        LiveKitAPI(server.url, KEY, "another-secret-0123456789abcdef-xyz"),
        LiveKitAPI(server.url, "otherkey", SECRET),
        LiveKitAPI.with_token(expired, server.url),
    ]
    try:
        for client in clients:
            with pytest.raises(ServerError) as info:
                await client.room.list_rooms(ListRoomsRequest())
            # A plain-text body: the client cannot read a Twirp code from it.
            assert (info.value.status, info.value.code) == (401, "unknown")
    finally:
        for client in clients:
            await client.aclose()


async def test_expiry_has_one_minute_leeway(server: LiveKitEmulator) -> None:
    token = room_list_token(expired_seconds_ago=20)
    async with LiveKitAPI.with_token(token, server.url) as client:
        await client.room.list_rooms(ListRoomsRequest())


async def test_token_for_another_room_or_without_grant_is_unauthenticated(
    server: LiveKitEmulator, lkapi: LiveKitAPI
) -> None:
    await lkapi.room.create_room(CreateRoomRequest(name="room-b"))
    async with LiveKitAPI.with_token(admin_token("room-a"), server.url) as client:
        with pytest.raises(ServerError) as info:
            await client.room.list_participants(ListParticipantsRequest(room="room-b"))
        assert (info.value.status, info.value.code, info.value.message) == (
            401,
            "unauthenticated",
            "permissions denied",
        )
        # roomAdmin does not include roomCreate/roomList.
        with pytest.raises(ServerError) as info:
            await client.room.create_room(CreateRoomRequest(name="room-a"))
        assert info.value.code == "unauthenticated"
        with pytest.raises(ServerError) as info:
            await client.room.list_rooms(ListRoomsRequest())
        assert info.value.code == "unauthenticated"
        # The room the token names is fine.
        await client.room.list_participants(ListParticipantsRequest(room="room-a"))


# -- rooms -----------------------------------------------------------------------------------------


async def test_create_room_is_idempotent_and_delete_disconnects(
    server: LiveKitEmulator, lkapi: LiveKitAPI
) -> None:
    first = await lkapi.room.create_room(CreateRoomRequest(name="r1", empty_timeout=30, max_participants=5))
    assert first.sid.startswith("RM_")
    assert (first.name, first.empty_timeout, first.max_participants) == ("r1", 30, 5)
    assert first.creation_time > 0
    again = await lkapi.room.create_room(CreateRoomRequest(name="r1"))
    assert (again.sid, again.empty_timeout, again.creation_time) == (first.sid, 30, first.creation_time)

    await lkapi.room.create_room(CreateRoomRequest(name="r2"))
    rooms = await lkapi.room.list_rooms(ListRoomsRequest())
    assert {r.name for r in rooms.rooms} == {"r1", "r2"}
    only = await lkapi.room.list_rooms(ListRoomsRequest(names=["r2", "missing"]))
    assert [r.name for r in only.rooms] == ["r2"]

    server.connect(participant_token("r1", "alice"))
    await lkapi.room.delete_room(DeleteRoomRequest(room="r1"))
    assert server.state.find_participant("r1", "alice") is None
    with pytest.raises(ServerError) as info:
        await lkapi.room.delete_room(DeleteRoomRequest(room="r1"))
    assert (info.value.status, info.value.code) == (404, "not_found")


async def test_update_room_metadata(lkapi: LiveKitAPI) -> None:
    with pytest.raises(ServerError) as info:
        await lkapi.room.update_room_metadata(UpdateRoomMetadataRequest(room="nope", metadata="x"))
    assert info.value.code == "not_found"
    await lkapi.room.create_room(CreateRoomRequest(name="r"))
    room = await lkapi.room.update_room_metadata(UpdateRoomMetadataRequest(room="r", metadata="m"))
    assert room.metadata == "m"


# -- participants ----------------------------------------------------------------------------------


async def test_list_get_remove_participants(server: LiveKitEmulator, lkapi: LiveKitAPI) -> None:
    empty = await lkapi.room.list_participants(ListParticipantsRequest(room="no-such-room"))
    assert list(empty.participants) == []

    alice = server.connect(participant_token("r", "alice"))
    assert alice.sid.startswith("PA_")
    assert alice.state == ParticipantInfo.ACTIVE
    server.connect(participant_token("r", "bob"))
    listed = await lkapi.room.list_participants(ListParticipantsRequest(room="r"))
    assert {p.identity for p in listed.participants} == {"alice", "bob"}

    got = await lkapi.room.get_participant(RoomParticipantIdentity(room="r", identity="alice"))
    assert (got.sid, got.name) == (alice.sid, "alice")

    await lkapi.room.remove_participant(RoomParticipantIdentity(room="r", identity="alice"))
    for call in (lkapi.room.get_participant, lkapi.room.remove_participant):
        with pytest.raises(ServerError) as info:
            await call(RoomParticipantIdentity(room="r", identity="alice"))
        assert (info.value.status, info.value.code, info.value.message) == (
            404,
            "not_found",
            "participant does not exist",
        )
    with pytest.raises(ServerError) as info:
        await lkapi.room.get_participant(RoomParticipantIdentity(room="other", identity="bob"))
    assert info.value.code == "not_found"
    with pytest.raises(ServerError) as info:
        await lkapi.room.update_participant(
            UpdateParticipantRequest(room="r", identity="ghost", metadata="x")
        )
    assert info.value.code == "not_found"


async def test_reconnect_replaces_participant(server: LiveKitEmulator, lkapi: LiveKitAPI) -> None:
    first = server.connect(participant_token("r", "alice"))
    server.publish("r", "alice", "microphone")
    second = server.connect(participant_token("r", "alice"))
    assert second.sid != first.sid
    got = await lkapi.room.get_participant(RoomParticipantIdentity(room="r", identity="alice"))
    assert got.sid == second.sid
    assert list(got.tracks) == []


def test_connect_refuses_bad_tokens() -> None:
    emu = LiveKitEmulator(KEY, SECRET)
    with pytest.raises(PermissionError):
        emu.connect(participant_token("r", "alice", secret=SECRET[::-1]))
    no_join = AccessToken(KEY, SECRET).with_identity("x").with_grants(VideoGrants(room="r")).to_jwt()
    with pytest.raises(PermissionError):
        emu.connect(no_join)
    info = emu.connect(participant_token("r", "alice", sources=["microphone"], hidden=True))
    assert info.permission.hidden
    assert list(info.permission.can_publish_sources) == [TrackSource.MICROPHONE]
    with pytest.raises(PermissionError):
        emu.publish("r", "alice", "camera")
    with pytest.raises(LookupError):
        emu.publish("r", "nobody", "camera")


async def test_update_participant_replaces_whole_permission(
    server: LiveKitEmulator, lkapi: LiveKitAPI
) -> None:
    server.connect(participant_token("r", "rec", sources=["microphone", "camera"], hidden=True))
    mic = server.publish("r", "rec", "microphone")
    cam = server.publish("r", "rec", "camera")

    info = await lkapi.room.update_participant(
        UpdateParticipantRequest(
            room="r",
            identity="rec",
            metadata="meta",
            attributes={"a": "1"},
            permission=ParticipantPermission(
                can_publish=True, can_subscribe=True, can_publish_sources=[TrackSource.CAMERA]
            ),
        )
    )
    # Not sent means false: the participant is no longer hidden and may not publish data.
    assert not info.permission.hidden
    assert not info.permission.can_publish_data
    assert list(info.permission.can_publish_sources) == [TrackSource.CAMERA]
    assert [t.sid for t in info.tracks] == [cam]
    assert (info.metadata, dict(info.attributes)) == ("meta", {"a": "1"})
    with pytest.raises(PermissionError):
        server.publish("r", "rec", "microphone")
    assert mic not in {t.sid for t in server.state.participant("r", "rec").tracks}

    # Empty sources with can_publish means every source; can_publish false removes everything.
    await lkapi.room.update_participant(
        UpdateParticipantRequest(room="r", identity="rec", permission=ParticipantPermission(can_publish=True))
    )
    server.publish("r", "rec", "screen_share")
    server.publish("r", "rec", "microphone")
    info = await lkapi.room.update_participant(
        UpdateParticipantRequest(room="r", identity="rec", permission=ParticipantPermission())
    )
    assert list(info.tracks) == []
    with pytest.raises(PermissionError):
        server.publish("r", "rec", "camera")


async def test_update_without_permission_keeps_it(server: LiveKitEmulator, lkapi: LiveKitAPI) -> None:
    server.connect(participant_token("r", "popout", hidden=True))
    info = await lkapi.room.update_participant(
        UpdateParticipantRequest(room="r", identity="popout", name="Pop")
    )
    assert info.permission.hidden
    assert info.name == "Pop"


# -- tracks ----------------------------------------------------------------------------------------


async def test_mute_published_track(server: LiveKitEmulator, lkapi: LiveKitAPI) -> None:
    server.connect(participant_token("r", "alice"))
    mic = server.publish("r", "alice", "microphone")
    cam = server.publish("r", "alice", "camera")
    got = await lkapi.room.get_participant(RoomParticipantIdentity(room="r", identity="alice"))
    assert {(t.sid, t.type, t.source) for t in got.tracks} == {
        (mic, TrackType.AUDIO, TrackSource.MICROPHONE),
        (cam, TrackType.VIDEO, TrackSource.CAMERA),
    }

    res = await lkapi.room.mute_published_track(
        MuteRoomTrackRequest(room="r", identity="alice", track_sid=mic, muted=True)
    )
    assert (res.track.sid, res.track.muted) == (mic, True)

    with pytest.raises(ServerError) as info:
        await lkapi.room.mute_published_track(
            MuteRoomTrackRequest(room="r", identity="alice", track_sid=mic, muted=False)
        )
    assert (info.value.status, info.value.code) == (412, "failed_precondition")

    # The participant itself may unmute what the server muted.
    server.set_track_muted("r", "alice", mic, False)
    got = await lkapi.room.get_participant(RoomParticipantIdentity(room="r", identity="alice"))
    assert not next(t for t in got.tracks if t.sid == mic).muted

    res = await lkapi.room.mute_published_track(
        MuteRoomTrackRequest(room="r", identity="alice", track_sid="TR_unknown", muted=True)
    )
    assert not res.HasField("track")


async def test_mute_unknown_participant_times_out(lkapi: LiveKitAPI) -> None:
    started = time.monotonic()
    with pytest.raises(ServerError) as info:
        await lkapi.room.mute_published_track(
            MuteRoomTrackRequest(room="r", identity="ghost", track_sid="TR_x", muted=True)
        )
    assert time.monotonic() - started >= MUTE_DELAY
    assert info.value.code == "deadline_exceeded"


# -- faults ----------------------------------------------------------------------------------------


async def test_fault_unavailable(server: LiveKitEmulator, lkapi: LiveKitAPI) -> None:
    server.fault = EmulatorFault.UNAVAILABLE
    with pytest.raises(ServerError) as info:
        await lkapi.room.list_rooms(ListRoomsRequest())
    assert (info.value.status, info.value.code) == (503, "unavailable")
    server.fault = EmulatorFault.NONE
    await lkapi.room.list_rooms(ListRoomsRequest())


async def test_fault_hang_then_recover(server: LiveKitEmulator, lkapi: LiveKitAPI) -> None:
    server.fault = EmulatorFault.HANG
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await lkapi.room.list_rooms(ListRoomsRequest())
    pending = asyncio.create_task(lkapi.room.create_room(CreateRoomRequest(name="late")))
    await asyncio.sleep(0.1)
    assert not pending.done()
    server.fault = EmulatorFault.NONE
    async with asyncio.timeout(2):
        room = await pending
    assert room.name == "late"


async def test_hung_calls_end_when_server_stops() -> None:
    emu = LiveKitEmulator(KEY, SECRET)
    await emu.start()
    emu.fault = EmulatorFault.HANG
    async with LiveKitAPI(emu.url, KEY, SECRET) as client:
        pending = asyncio.create_task(client.room.list_rooms(ListRoomsRequest()))
        await asyncio.sleep(0.1)
        async with asyncio.timeout(5):
            await emu.stop()
            with pytest.raises(aiohttp.ClientError):
                await pending


async def test_fault_reset(server: LiveKitEmulator, lkapi: LiveKitAPI) -> None:
    server.fault = EmulatorFault.RESET
    with pytest.raises(aiohttp.ClientError):
        await lkapi.room.list_rooms(ListRoomsRequest())
    server.fault = EmulatorFault.NONE
    await lkapi.room.list_rooms(ListRoomsRequest())


async def test_control_routes_ignore_faults(server: LiveKitEmulator, http: aiohttp.ClientSession) -> None:
    base = f"{server.url}/_emulator"
    async with http.post(f"{base}/fault", json={"mode": "unavailable"}) as resp:
        assert resp.status == 200
    assert server.fault is EmulatorFault.UNAVAILABLE
    async with http.post(f"{base}/connect", json={"token": participant_token("r", "a")}) as resp:
        assert resp.status == 200
    async with http.post(f"{base}/fault", json={"mode": "bogus"}) as resp:
        assert resp.status == 400
    async with http.post(f"{base}/fault", json={"mode": "none"}) as resp:
        assert resp.status == 200
    assert server.fault.value == "none"


# -- calls log, routing ----------------------------------------------------------------------------


async def test_calls_are_recorded(
    server: LiveKitEmulator, lkapi: LiveKitAPI, http: aiohttp.ClientSession
) -> None:
    await lkapi.room.create_room(CreateRoomRequest(name="r"))
    await lkapi.room.list_participants(ListParticipantsRequest(room="r"))
    assert server.calls == ["CreateRoom", "ListParticipants"]
    async with http.get(f"{server.url}/_emulator/calls") as resp:
        # With the traceparent each call carried (livekit-api sends none unless given a traced session).
        recorded = await resp.json()
    assert recorded == {
        "calls": ["CreateRoom", "ListParticipants"],
        "rooms": ["r", "r"],  # the room each request named (CreateRoom names it as ``name``)
        "traceparents": [None, None],
    }
    async with http.post(f"{server.url}/_emulator/calls/clear") as resp:
        assert resp.status == 200
    assert server.calls == []


async def test_bad_route_and_json_body(server: LiveKitEmulator, http: aiohttp.ClientSession) -> None:
    headers = {"Authorization": f"Bearer {admin_token('r')}", "Content-Type": "application/json"}
    status, _, text = await twirp_status(http, server.url, "NoSuchMethod", b"{}", headers)
    assert status == 404
    assert '"bad_route"' in text
    server.connect(participant_token("r", "alice"))
    status, ctype, text = await twirp_status(http, server.url, "ListParticipants", b'{"room": "r"}', headers)
    assert (status, ctype) == (200, "application/json")
    assert '"alice"' in text


# -- control routes --------------------------------------------------------------------------------


async def test_control_routes_simulate_clients(
    server: LiveKitEmulator, lkapi: LiveKitAPI, http: aiohttp.ClientSession
) -> None:
    base = f"{server.url}/_emulator"
    async with http.post(f"{base}/connect", json={"token": "garbage"}) as resp:
        assert resp.status == 401
        assert "error" in await resp.json()
    token = participant_token("r", "alice", sources=["microphone"])
    async with http.post(f"{base}/connect", json={"token": token}) as resp:
        assert resp.status == 200
        joined = await resp.json()
    assert (joined["identity"], joined["room"]) == ("alice", "r")
    assert joined["sid"].startswith("PA_")

    publish = {"room": "r", "identity": "alice", "source": "microphone", "muted": False}
    async with http.post(f"{base}/publish", json=publish) as resp:
        assert resp.status == 200
        sid = (await resp.json())["sid"]
    assert sid.startswith("TR_")
    async with http.post(f"{base}/publish", json={**publish, "source": "camera"}) as resp:
        assert resp.status == 403
    async with http.post(f"{base}/publish", json={**publish, "identity": "bob"}) as resp:
        assert resp.status == 404

    mute = {"room": "r", "identity": "alice", "track_sid": sid, "muted": True}
    async with http.post(f"{base}/mute", json=mute) as resp:
        assert resp.status == 200
    got = await lkapi.room.get_participant(RoomParticipantIdentity(room="r", identity="alice"))
    assert got.tracks[0].muted

    async with http.post(f"{base}/disconnect", json={"room": "r", "identity": "alice"}) as resp:
        assert resp.status == 200
    listed = await lkapi.room.list_participants(ListParticipantsRequest(room="r"))
    assert list(listed.participants) == []


async def test_control_routes_unpublish_and_rooms_snapshot(
    server: LiveKitEmulator, lkapi: LiveKitAPI, http: aiohttp.ClientSession
) -> None:
    base = f"{server.url}/_emulator"
    server.connect(participant_token("r", "alice", sources=["microphone", "camera"]))
    server.connect(participant_token("r", "rec", can_publish=False, hidden=True))
    server.connect(participant_token("other", "bob"))
    microphone = server.publish("r", "alice", "microphone")
    camera = server.publish("r", "alice", "camera")
    server.set_track_muted("r", "alice", camera, True)

    async with http.get(f"{base}/rooms", params={"room": "r"}) as resp:
        assert resp.status == 200
        rooms = (await resp.json())["rooms"]
    assert [room["name"] for room in rooms] == ["r"]
    by_identity = {p["identity"]: p for p in rooms[0]["participants"]}
    alice, recorder = by_identity["alice"], by_identity["rec"]
    assert alice["state"] == "ACTIVE"
    assert alice["tracks"] == [
        {"sid": microphone, "source": "microphone", "muted": False},
        {"sid": camera, "source": "camera", "muted": True},
    ]
    assert alice["permission"]["can_publish"] is True
    assert alice["permission"]["can_publish_sources"] == ["microphone", "camera"]
    assert alice["permission"]["hidden"] is False
    assert recorder["permission"]["can_publish"] is False
    assert recorder["permission"]["hidden"] is True
    async with http.get(f"{base}/rooms") as resp:
        assert {room["name"] for room in (await resp.json())["rooms"]} == {"r", "other"}

    unpublish = {"room": "r", "identity": "alice", "track_sid": microphone}
    async with http.post(f"{base}/unpublish", json=unpublish) as resp:
        assert resp.status == 200
    got = await lkapi.room.get_participant(RoomParticipantIdentity(room="r", identity="alice"))
    assert [t.sid for t in got.tracks] == [camera]
    async with http.post(f"{base}/unpublish", json=unpublish) as resp:
        assert resp.status == 404
    async with http.post(f"{base}/unpublish", json={**unpublish, "identity": "nobody"}) as resp:
        assert resp.status == 404


async def test_bulk_participants(
    server: LiveKitEmulator, lkapi: LiveKitAPI, http: aiohttp.ClientSession
) -> None:
    body = {
        "room": "big",
        "count": 1000,
        "prefix": "u",
        "sources": ["microphone", "camera"],
        "can_publish_sources": ["microphone", "camera"],
    }
    async with http.post(f"{server.url}/_emulator/participants/bulk", json=body) as resp:
        assert resp.status == 200
        identities = (await resp.json())["identities"]
    assert identities[:2] == ["u0", "u1"]
    assert len(identities) == 1000
    listed = await lkapi.room.list_participants(ListParticipantsRequest(room="big"))
    assert len(listed.participants) == 1000
    p = next(p for p in listed.participants if p.identity == "u7")
    assert {t.source for t in p.tracks} == {TrackSource.MICROPHONE, TrackSource.CAMERA}
    assert not any(t.muted for t in p.tracks)
    assert p.permission.can_publish
    assert p.permission.can_subscribe
    assert p.permission.can_publish_data
    rooms = await lkapi.room.list_rooms(ListRoomsRequest(names=["big"]))
    assert rooms.rooms[0].num_participants == 1000


# -- webhooks --------------------------------------------------------------------------------------


@pytest.fixture
async def webhooks() -> AsyncIterator[tuple[str, asyncio.Queue[WebhookEvent]]]:
    """A receiver that checks every webhook as the service does; its URL and what it received."""
    receiver = WebhookReceiver(TokenVerifier(KEY, SECRET))
    events: asyncio.Queue[WebhookEvent] = asyncio.Queue()

    async def hook(request: web.Request) -> web.Response:
        assert request.content_type == "application/webhook+json"
        event = receiver.receive((await request.read()).decode(), request.headers["Authorization"])
        await events.put(event)
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/hook", events
    await runner.cleanup()


async def _received(events: asyncio.Queue[WebhookEvent], count: int) -> list[WebhookEvent]:
    received: list[WebhookEvent] = []
    async with asyncio.timeout(5):
        while len(received) < count:
            received.append(await events.get())
    return received


async def test_webhooks_are_signed_and_verifiable(
    http: aiohttp.ClientSession,
    server: LiveKitEmulator,
    webhooks: tuple[str, asyncio.Queue[WebhookEvent]],
) -> None:
    url, events = webhooks
    async with http.post(f"{server.url}/_emulator/webhook", json={"url": url}) as resp:
        assert resp.status == 200
    joined = server.connect(participant_token("r", "alice"))
    sid = server.publish("r", "alice", "microphone")
    server.disconnect("r", "alice")
    received = await _received(events, 4)
    assert [e.event for e in received] == [
        "room_started",
        "participant_joined",
        "track_published",
        "participant_left",
    ]
    assert all(e.id and e.created_at > 0 and e.room.name == "r" for e in received)
    assert received[1].participant.sid == joined.sid
    assert received[2].track.sid == sid
    assert received[2].participant.identity == "alice"


async def test_webhooks_switched_off_are_lost_and_a_forgotten_room_tells_nobody(
    http: aiohttp.ClientSession,
    server: LiveKitEmulator,
    lkapi: LiveKitAPI,
    webhooks: tuple[str, asyncio.Queue[WebhookEvent]],
) -> None:
    url, events = webhooks
    async with http.post(f"{server.url}/_emulator/webhook", json={"url": url}) as resp:
        assert await resp.json() == {"url": url, "enabled": True}
    async with http.post(f"{server.url}/_emulator/webhook", json={"enabled": False}) as resp:
        assert await resp.json() == {"url": url, "enabled": False}  # the URL is kept
    token = participant_token("r", "bob", sources=["camera", "microphone"])
    server.connect(token)
    async with http.post(f"{server.url}/_emulator/forget", json={"room": "r"}) as resp:
        assert await resp.json() == {"identities": ["bob"]}
    assert (await lkapi.room.list_participants(ListParticipantsRequest(room="r"))).participants == []
    async with http.post(f"{server.url}/_emulator/webhook", json={"enabled": True}) as resp:
        assert resp.status == 200
    # The client connects again with the token it holds: the room is new, its permission the token's.
    server.connect(token)
    received = await _received(events, 2)
    assert [e.event for e in received] == ["room_started", "participant_joined"]  # nothing before
    listed = await lkapi.room.list_participants(ListParticipantsRequest(room="r"))
    assert list(listed.participants[0].permission.can_publish_sources) == [
        TrackSource.CAMERA,
        TrackSource.MICROPHONE,
    ]


async def test_a_delayed_method_answers_no_sooner_than_its_delay(
    http: aiohttp.ClientSession, server: LiveKitEmulator, lkapi: LiveKitAPI
) -> None:
    async with http.post(
        f"{server.url}/_emulator/delay", json={"method": "ListParticipants", "seconds": 0.3}
    ) as resp:
        assert await resp.json() == {"delays": {"ListParticipants": 0.3}}
    started = time.monotonic()
    await lkapi.room.list_participants(ListParticipantsRequest(room="r"))
    assert time.monotonic() - started >= 0.3  # a lower bound: load only makes it longer
    async with http.post(
        f"{server.url}/_emulator/delay", json={"method": "ListParticipants", "seconds": 0}
    ) as resp:
        assert await resp.json() == {"delays": {}}
    async with http.post(f"{server.url}/_emulator/delay", json={"method": "Nope", "seconds": 1}) as resp:
        assert resp.status == 400


# -- process ---------------------------------------------------------------------------------------


async def test_module_runs_as_process() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "livekit_signaling.emulator",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--api-key",
        KEY,
        "--api-secret",
        SECRET,
        cwd=REPO_ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(10):
            line = (await proc.stdout.readline()).decode()
        match = re.fullmatch(r"LISTENING (http://127\.0\.0\.1:\d+)\n", line)
        assert match, line
        async with LiveKitAPI(match.group(1), KEY, SECRET) as client:
            room = await client.room.create_room(CreateRoomRequest(name="proc"))
        assert room.name == "proc"
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            assert await proc.wait() == 0
        assert await proc.stdout.read() == b""
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
