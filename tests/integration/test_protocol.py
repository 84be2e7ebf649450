"""Every command and event of the protocol, end to end: RabbitMQ in, LiveKit (emulator) acted on,
events out. The service runs as a process; tests see it only through the broker and LiveKit's API."""

from __future__ import annotations

import uuid

from livekit.api import TokenVerifier

from livekit_signaling.schemas.routing import participant_routing_key
from testkit.amqp import ReceivedEvent, SignalingClient
from testkit.emulator import Emulator, allowed_sources, microphone_tracks
from testkit.processes import API_KEY, API_SECRET, ServiceProcess

ALL = {"camera", "microphone", "screen_share", "screen_share_audio"}
verifier = TokenVerifier(API_KEY, API_SECRET)


def pid() -> str:
    return str(uuid.uuid4())


async def join(
    client: SignalingClient,
    emulator: Emulator,
    room: str,
    participant: str,
    *,
    role: str = "user",
    kind: str | None = None,
    connect: bool = True,
    microphone: bool = False,
) -> tuple[ReceivedEvent, str | None]:
    """Join through the service, then (like a client) connect to LiveKit with the token it handed out."""
    event = await client.reply(room, participant, {"action": "join"}, role=role, kind=kind)
    assert event.message == "join_success", event.body
    track = None
    if connect:
        await emulator.connect(event.payload["credentials"]["token"])
        if microphone:
            track = await emulator.publish(room, participant, "microphone")
    return event, track


async def test_join_success_carries_credentials_and_state(
    client: SignalingClient, emulator: Emulator, room: str
) -> None:
    participant = pid()
    message_id = await client.send(room, participant, {"action": "join"})
    [event] = await client.wait_for(lambda e: e.correlation_id == message_id)

    assert event.routing_key == participant_routing_key(room, participant)
    assert event.type == "join_success"
    assert event.persistent
    assert event.body["room"] == room
    assert event.participant == participant
    credentials = event.payload["credentials"]
    assert credentials["room"] == room
    assert credentials["public_url"] == "wss://livekit.example.test"
    assert "service_url" not in credentials  # only sip and recorder participants get it
    assert event.payload["microphone_restriction_state"] == {"type": "disabled"}

    claims = verifier.verify(credentials["token"])
    assert claims.identity == participant
    assert claims.video is not None
    assert claims.video.room_join is True
    assert claims.video.room == room
    assert claims.video.can_subscribe is True
    assert set(claims.video.can_publish_sources or []) == ALL
    assert not claims.video.room_admin and not claims.video.room_create and not claims.video.room_list
    assert not claims.video.room_record and not claims.video.hidden

    # The room was created first, and the token lets a client in.
    await emulator.connect(credentials["token"])
    assert participant in await emulator.participants(room)


async def test_service_url_goes_to_sip_and_recorder_only(
    client: SignalingClient, emulator: Emulator, room: str
) -> None:
    sip, _ = await join(client, emulator, room, pid(), kind="sip", connect=False)
    assert sip.payload["credentials"]["service_url"] == "http://livekit.internal.test:7880"
    sip_claims = verifier.verify(sip.payload["credentials"]["token"])
    assert sip_claims.video is not None and sip_claims.video.can_publish_sources == ["microphone"]

    recorder, _ = await join(client, emulator, room, pid(), kind="recorder", connect=False)
    assert recorder.payload["credentials"]["service_url"] == "http://livekit.internal.test:7880"
    claims = verifier.verify(recorder.payload["credentials"]["token"])
    assert claims.video is not None
    assert claims.video.hidden is True
    assert claims.video.can_publish is False
    assert claims.video.can_subscribe is True


async def test_create_new_access_token_answers_credentials(
    client: SignalingClient, emulator: Emulator, room: str
) -> None:
    participant = pid()
    await join(client, emulator, room, participant, connect=False)
    event = await client.reply(room, participant, {"action": "create_new_access_token"})
    assert event.message == "credentials"
    assert event.payload["room"] == room
    assert event.payload["public_url"] == "wss://livekit.example.test"
    claims = verifier.verify(event.payload["token"])
    assert claims.identity == participant
    assert claims.video is not None and claims.video.room == room


async def test_popout_token_is_hidden_subscribe_only_and_separate(
    client: SignalingClient, emulator: Emulator, room: str
) -> None:
    participant = pid()
    await join(client, emulator, room, participant)
    event = await client.reply(room, participant, {"action": "request_popout_stream_access_token"})
    assert event.message == "popout_stream_access_token"
    claims = verifier.verify(event.payload["token"])
    assert claims.identity != participant and claims.identity.startswith(participant)
    assert claims.video is not None
    assert claims.video.room == room and claims.video.room_join
    assert claims.video.hidden is True
    assert claims.video.can_publish is False
    assert claims.video.can_publish_data is False
    assert claims.video.can_subscribe is True

    await emulator.connect(event.payload["token"])
    connected = await emulator.participants(room)
    assert {participant, claims.identity} <= set(connected)  # the popout did not kick its owner out
    await emulator.publish(room, claims.identity, "camera", expect=403)


async def test_force_mute_mutes_microphones_and_names_unknown_targets(
    client: SignalingClient, emulator: Emulator, room: str
) -> None:
    moderator, speaker, silent, stranger = pid(), pid(), pid(), pid()
    await join(client, emulator, room, moderator, role="moderator")
    _, track = await join(client, emulator, room, speaker, microphone=True)
    await join(client, emulator, room, silent)  # connected, no microphone track

    message_id = await client.send(
        room,
        moderator,
        {"action": "force_mute", "participants": [speaker, silent, stranger]},
        role="moderator",
    )
    muted = await client.wait_for(lambda e: e.correlation_id == message_id and e.message == "force_muted")
    assert [e.participant for e in muted] == [speaker]
    assert muted[0].payload == {"message": "force_muted", "moderator": moderator}
    [error] = await client.wait_for(lambda e: e.correlation_id == message_id and e.message == "error")
    assert error.participant == moderator
    assert error.payload == {"message": "error", "error": "unknown_participants", "participants": [stranger]}

    info = await emulator.participant(room, speaker)
    assert [t.sid for t in microphone_tracks(info)] == [track]
    assert all(t.muted for t in microphone_tracks(info))
    await client.quiet()
    assert not [e for e in client.events_for(room, silent) if e.message == "force_muted"]


async def test_moderator_commands_refused_for_users_and_guests_without_calling_livekit(
    client: SignalingClient, emulator: Emulator, room: str
) -> None:
    target = pid()
    await join(client, emulator, room, target, microphone=True)
    commands = [
        {"action": "force_mute", "participants": [target]},
        {"action": "grant_screen_share_permission", "participants": [target]},
        {"action": "revoke_screen_share_permission", "participants": [target]},
        {"action": "enable_microphone_restrictions", "unrestricted_participants": []},
        {"action": "disable_microphone_restrictions"},
    ]
    # This room's calls only: the session's service reconciles other tests' rooms meanwhile.
    before = await emulator.calls(room=room)
    for role in ("user", "guest"):
        for command in commands:
            event = await client.reply(room, pid(), command, role=role)
            assert event.payload == {"message": "error", "error": "insufficient_permissions"}, command
    assert await emulator.calls(room=room) == before
    assert "microphone" in allowed_sources(await emulator.participant(room, target))
    # The same command from a moderator does reach LiveKit, and is seen in this room's calls.
    moderator = pid()
    event = await client.reply(room, moderator, commands[0], role="moderator")
    assert (event.participant, event.payload) == (target, {"message": "force_muted", "moderator": moderator})
    assert "MutePublishedTrack" in (await emulator.calls(room=room))[len(before) :]


async def test_microphone_restrictions_hold_in_livekit_and_for_late_joiners(
    client: SignalingClient, emulator: Emulator, room: str
) -> None:
    moderator, speaker, listener = pid(), pid(), pid()
    await join(client, emulator, room, moderator, role="moderator", microphone=True)
    await join(client, emulator, room, speaker, microphone=True)
    await join(client, emulator, room, listener, microphone=True)
    recorder = pid()
    await join(client, emulator, room, recorder, kind="recorder")

    message_id = await client.send(
        room,
        moderator,
        {"action": "enable_microphone_restrictions", "unrestricted_participants": [speaker]},
        role="moderator",
    )
    enabled = await client.wait_for(lambda e: e.correlation_id == message_id, count=4)
    assert {e.participant for e in enabled} == {moderator, speaker, listener, recorder}
    assert all(
        e.payload == {"message": "microphone_restrictions_enabled", "unrestricted_participants": [speaker]}
        for e in enabled
    )
    connected = await emulator.participants(room)
    # The restricted listener lost the microphone: its track is gone and a new one is refused.
    assert "microphone" not in allowed_sources(connected[listener])
    assert microphone_tracks(connected[listener]) == []
    await emulator.publish(room, listener, "microphone", expect=403)
    assert "camera" in allowed_sources(connected[listener])  # nothing else was taken
    assert connected[listener].permission.can_subscribe and connected[listener].permission.can_publish_data
    # Moderators and the unrestricted keep theirs.
    assert microphone_tracks(connected[speaker]) and microphone_tracks(connected[moderator])
    # The recorder stayed hidden (UpdateParticipant replaces the whole permission).
    assert connected[recorder].permission.hidden is True

    late = pid()
    event, _ = await join(client, emulator, room, late)
    assert event.payload["microphone_restriction_state"] == {
        "type": "enabled",
        "unrestricted_participants": [speaker],
    }
    claims = verifier.verify(event.payload["credentials"]["token"])
    assert claims.video is not None and "microphone" not in (claims.video.can_publish_sources or [])
    refreshed = await client.reply(room, listener, {"action": "create_new_access_token"})
    refreshed_claims = verifier.verify(refreshed.payload["token"])
    assert refreshed_claims.video is not None
    assert "microphone" not in (refreshed_claims.video.can_publish_sources or [])

    message_id = await client.send(
        room, moderator, {"action": "disable_microphone_restrictions"}, role="moderator"
    )
    disabled = await client.wait_for(lambda e: e.correlation_id == message_id, count=5)
    assert {e.participant for e in disabled} == {moderator, speaker, listener, recorder, late}
    assert all(e.payload == {"message": "microphone_restrictions_disabled"} for e in disabled)
    connected = await emulator.participants(room)
    assert "microphone" in allowed_sources(connected[listener])
    assert "microphone" in allowed_sources(connected[late])
    await emulator.publish(room, listener, "microphone")
    assert connected[recorder].permission.hidden is True
    assert not connected[recorder].permission.can_publish


async def test_restrictions_with_nobody_unrestricted_are_still_enabled(
    client: SignalingClient, emulator: Emulator, room: str
) -> None:
    moderator = pid()
    await join(client, emulator, room, moderator, role="moderator", connect=False)
    await client.reply(
        room,
        moderator,
        {"action": "enable_microphone_restrictions", "unrestricted_participants": []},
        role="moderator",
    )
    event, _ = await join(client, emulator, room, pid(), connect=False)
    assert event.payload["microphone_restriction_state"] == {
        "type": "enabled",
        "unrestricted_participants": [],
    }


async def test_screen_share_revoke_and_grant_follow_into_livekit_and_tokens(
    client: SignalingClient, emulator: Emulator, room: str
) -> None:
    moderator, presenter, stranger = pid(), pid(), pid()
    await join(client, emulator, room, moderator, role="moderator")
    await join(client, emulator, room, presenter)
    screen = await emulator.publish(room, presenter, "screen_share")
    assert screen

    message_id = await client.send(
        room,
        moderator,
        {"action": "revoke_screen_share_permission", "participants": [presenter, stranger]},
        role="moderator",
    )
    answers = await client.wait_for(lambda e: e.correlation_id == message_id, count=2)
    by_message = {e.message: e for e in answers}
    assert by_message["screen_share_permissions_updated"].participant == moderator
    assert by_message["screen_share_permissions_updated"].payload == {
        "message": "screen_share_permissions_updated",
        "grant": False,
        "participants": [presenter],
    }
    assert by_message["error"].payload["participants"] == [stranger]
    info = await emulator.participant(room, presenter)
    assert allowed_sources(info) == {"camera", "microphone"}
    assert not [t for t in info.tracks if t.sid == screen]
    # Stored for the room: a new token follows the decision (the reference module forgot it).
    refreshed = await client.reply(room, presenter, {"action": "create_new_access_token"})
    claims = verifier.verify(refreshed.payload["token"])
    assert claims.video is not None and set(claims.video.can_publish_sources or []) == {
        "camera",
        "microphone",
    }

    event = await client.reply(
        room,
        moderator,
        {"action": "grant_screen_share_permission", "participants": [presenter]},
        role="moderator",
    )
    assert event.payload == {
        "message": "screen_share_permissions_updated",
        "grant": True,
        "participants": [presenter],
    }
    assert allowed_sources(await emulator.participant(room, presenter)) == ALL


async def test_leave_removes_every_issued_identity_from_livekit(
    client: SignalingClient, emulator: Emulator, room: str
) -> None:
    participant, other = pid(), pid()
    await join(client, emulator, room, participant)
    await join(client, emulator, room, other)
    popout = await client.reply(room, participant, {"action": "request_popout_stream_access_token"})
    await emulator.connect(popout.payload["token"])
    assert len(await emulator.participants(room)) == 3

    message_id = await client.send(room, participant, {"action": "leave"})
    # leave has no answer on success; the next command of the room runs after it (per-room order).
    await client.reply(room, other, {"action": "create_new_access_token"})
    assert set(await emulator.participants(room)) == {other}
    assert not [e for e in client.events if e.correlation_id == message_id]


async def test_restricted_rooms_are_counted(
    client: SignalingClient, emulator: Emulator, room: str, service: ServiceProcess
) -> None:
    before = service.metric("livekit_signaling_rooms_with_microphone_restrictions")
    moderator = pid()
    enable = {"action": "enable_microphone_restrictions", "unrestricted_participants": []}
    await client.reply(room, moderator, {"action": "join"}, role="moderator")
    await client.reply(room, moderator, enable, role="moderator")
    assert service.metric("livekit_signaling_rooms_with_microphone_restrictions") == before + 1
    await client.reply(room, moderator, {"action": "disable_microphone_restrictions"}, role="moderator")
    assert service.metric("livekit_signaling_rooms_with_microphone_restrictions") == before


async def test_close_room_deletes_the_room_and_its_state(
    client: SignalingClient, emulator: Emulator, room: str
) -> None:
    moderator = pid()
    await join(client, emulator, room, moderator, role="moderator")
    await client.reply(
        room,
        moderator,
        {"action": "enable_microphone_restrictions", "unrestricted_participants": []},
        role="moderator",
    )
    await client.send(room, moderator, {"action": "close_room"}, role="moderator")
    event, _ = await join(client, emulator, room, pid(), connect=False)
    assert event.payload["microphone_restriction_state"] == {"type": "disabled"}
    assert await emulator.participants(room) == {}


async def test_invalid_payloads_get_invalid_command(client: SignalingClient, room: str) -> None:
    participant = pid()
    for payload in (
        {"action": "fly_to_the_moon"},
        {"action": "force_mute"},
        {"action": "force_mute", "participants": "not-a-list"},
        {"action": "force_mute", "participants": ["has.a.dot"]},
        {"no_action": True},
    ):
        event = await client.reply(room, participant, payload, role="moderator")
        assert event.message == "error", payload
        assert event.payload["error"] == "invalid_command"
        assert event.payload["detail"]


async def test_commands_of_a_room_take_effect_in_order(
    client: SignalingClient, emulator: Emulator, room: str
) -> None:
    moderator, listener = pid(), pid()
    await join(client, emulator, room, moderator, role="moderator")
    await join(client, emulator, room, listener)
    enable = {"action": "enable_microphone_restrictions", "unrestricted_participants": []}
    disable = {"action": "disable_microphone_restrictions"}
    ids = [
        await client.send(room, moderator, enable if n % 2 == 0 else disable, role="moderator")
        for n in range(20)
    ]
    await client.wait_for(lambda e: e.correlation_id == ids[-1] and e.participant == moderator)
    answered = [e.correlation_id for e in client.events_for(room, moderator) if e.correlation_id in ids]
    assert answered == ids
    assert "microphone" in allowed_sources(await emulator.participant(room, listener))


async def test_redelivered_command_is_answered_once(client: SignalingClient, room: str) -> None:
    participant = pid()
    message_id = str(uuid.uuid4())
    await client.send(room, participant, {"action": "join"}, message_id=message_id)
    await client.send(room, participant, {"action": "join"}, message_id=message_id)
    follow_up = await client.send(room, participant, {"action": "create_new_access_token"})
    await client.wait_for(lambda e: e.correlation_id == follow_up)
    assert len([e for e in client.events if e.correlation_id == message_id]) == 1


async def test_livekit_unavailable_reaches_the_sender_then_service_recovers(
    client: SignalingClient, emulator: Emulator, room: str, service: ServiceProcess
) -> None:
    participant = pid()
    for mode in ("unavailable", "hang", "reset"):
        # A fresh room each time: a room the service created recently is not created again.
        fresh_room = f"{room}-{mode}"
        await emulator.fault(mode)
        event = await client.reply(fresh_room, participant, {"action": "join"}, timeout=10)
        assert event.payload == {"message": "error", "error": "livekit_unavailable"}, mode
        await emulator.fault("none")
        event = await client.reply(fresh_room, participant, {"action": "join"})
        assert event.message == "join_success"
    # Once created, a room needs LiveKit no more for a join: the cache spares CreateRoom.
    await emulator.fault("unavailable")
    event = await client.reply(f"{room}-reset", participant, {"action": "join"})
    assert event.message == "join_success"
    await emulator.fault("none")
    assert service.metric("livekit_signaling_livekit_retries_total") > 0
    assert (
        service.wait_metric(
            "livekit_signaling_commands_total", 3, action="join", outcome="livekit_unavailable"
        )
        >= 3
    )


async def test_metrics_count_commands_and_livekit_calls(
    client: SignalingClient, emulator: Emulator, room: str, service: ServiceProcess
) -> None:
    before = service.metric("livekit_signaling_commands_total", action="join", outcome="ok")
    await join(client, emulator, room, pid(), connect=False)
    assert (
        service.wait_metric("livekit_signaling_commands_total", before + 1, action="join", outcome="ok")
        == before + 1
    )
    assert service.metric("livekit_signaling_livekit_requests_total", method="CreateRoom", outcome="ok") > 0
    assert service.metric("livekit_signaling_livekit_request_duration_seconds_count", method="CreateRoom") > 0
    status, text = service.http("/metrics")
    assert status == 200 and "livekit_signaling_livekit_retries_total" in text
    assert API_SECRET not in text
