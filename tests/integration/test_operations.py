"""What operators and platform teams rely on: LiveKit webhooks closing the late-connect gap, the operator
CLI, structured logs without secrets."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid

import aiohttp

from livekit_signaling.schemas.routing import participant_routing_key
from testkit.amqp import SignalingClient
from testkit.emulator import Emulator, allowed_sources, microphone_tracks
from testkit.processes import API_SECRET, ServiceProcess, cli_send


async def test_stale_token_loses_its_microphone_through_the_webhook(
    client: SignalingClient, emulator: Emulator, room: str, service: ServiceProcess
) -> None:
    await emulator.set_webhook(f"http://127.0.0.1:{service.port}/webhook")
    try:
        moderator, late = str(uuid.uuid4()), str(uuid.uuid4())
        await client.reply(room, moderator, {"action": "join"}, role="moderator")
        # The token is minted while everybody may speak...
        joined = await client.reply(room, late, {"action": "join"})
        await client.reply(
            room,
            moderator,
            {"action": "enable_microphone_restrictions", "unrestricted_participants": []},
            role="moderator",
        )
        # ...and used only after the restriction: LiveKit admits it with a microphone.
        await emulator.connect(joined.payload["credentials"]["token"])
        await emulator.publish(room, late, "microphone", expect=200)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            info = await emulator.participant(room, late)
            if "microphone" not in allowed_sources(info) and not microphone_tracks(info):
                break
            await asyncio.sleep(0.05)
        info = await emulator.participant(room, late)
        assert "microphone" not in allowed_sources(info)
        assert microphone_tracks(info) == []
        assert "camera" in allowed_sources(info)
        assert (
            service.wait_metric(
                "livekit_signaling_webhooks_total", 1, event="participant_joined", outcome="ok"
            )
            >= 1
        )
    finally:
        await emulator.set_webhook(None)


async def test_forged_webhooks_are_refused(service: ServiceProcess) -> None:
    body = json.dumps(
        {"event": "participant_joined", "room": {"name": "r"}, "participant": {"identity": "p"}}
    )
    async with aiohttp.ClientSession() as session:
        for authorization in ("", "not-a-jwt", "Bearer x.y.z"):
            async with session.post(
                f"http://127.0.0.1:{service.port}/webhook",
                data=body,
                headers={"Authorization": authorization, "Content-Type": "application/webhook+json"},
            ) as response:
                assert response.status == 401
    assert service.metric("livekit_signaling_webhooks_total", outcome="rejected") >= 3


async def test_operator_cli_sends_a_command_and_prints_its_answer(service: ServiceProcess, room: str) -> None:
    routing_key, answer = await asyncio.to_thread(
        cli_send, service.env, room, "operator", {"action": "create_new_access_token"}, role="moderator"
    )
    assert routing_key == participant_routing_key(room, "operator")
    assert answer["payload"]["message"] == "credentials"


async def test_operator_cli_acts_as_a_user_unless_told_otherwise(service: ServiceProcess, room: str) -> None:
    # The least privileged role is the default: a moderator command without --role moderator is refused.
    routing_key, answer = await asyncio.to_thread(
        cli_send, service.env, room, "operator", {"action": "force_mute", "participants": ["someone"]}
    )
    assert routing_key == participant_routing_key(room, "operator")
    assert answer["payload"] == {"message": "error", "error": "insufficient_permissions"}


def test_operator_cli_prints_every_copy_of_a_broadcast_and_refuses_what_the_service_would(
    service: ServiceProcess, room: str
) -> None:
    for participant, role in (("mod", "moderator"), ("listener", "user")):
        cli_send(service.env, room, participant, {"action": "join"}, role=role)
    restrict = {"action": "enable_microphone_restrictions", "unrestricted_participants": []}
    completed = subprocess.run(
        [sys.executable, "-m", "livekit_signaling", "send", "--room", room, "--participant", "mod",
         "--role", "moderator", json.dumps(restrict)],
        env={**service.env, "SIGNALING_HTTP_PORT": "0"},
        capture_output=True,
        timeout=30,
        check=False,
    )  # fmt: skip
    lines = completed.stdout.decode().splitlines()
    assert sorted(line.partition(" ")[0] for line in lines) == [
        f"room.{room}.participant.listener",
        f"room.{room}.participant.mod",
    ]
    # Checked as the service checks it, before anything is sent: nothing to dead-letter.
    refused = subprocess.run(
        [sys.executable, "-m", "livekit_signaling", "send", "--room", "a.b", "--participant", "p",
         '{"action": "join"}'],
        env={**service.env, "SIGNALING_HTTP_PORT": "0"},
        capture_output=True,
        timeout=30,
        check=False,
    )  # fmt: skip
    assert refused.returncode == 2
    assert "$.room" in refused.stderr.decode()


def test_missing_setting_stops_start_up_with_one_line() -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("LIVEKIT_", "SIGNALING_"))}
    completed = subprocess.run(
        [sys.executable, "-m", "livekit_signaling", "run"],
        env=env,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert completed.returncode == 2
    assert (
        completed.stderr.decode()
        == "livekit-signaling: invalid setting: LIVEKIT_URL is required (or LIVEKIT_URL_FILE)\n"
    )


async def test_logs_are_json_with_command_fields_and_no_secrets(
    client: SignalingClient, service: ServiceProcess, room: str
) -> None:
    participant = str(uuid.uuid4())
    joined = await client.reply(room, participant, {"action": "join"})
    message_id = await client.send(room, participant, {"action": "no_such_action"})
    await client.wait_for(lambda e: e.correlation_id == message_id)
    await client.send(room, participant, b"", raw=b"{broken")
    await asyncio.sleep(0.5)
    lines = [json.loads(line) for line in service.logs().splitlines() if line.startswith("{")]
    assert lines
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    logs = service.logs()
    assert API_SECRET not in logs
    assert joined.payload["credentials"]["token"] not in logs
    dead_lettered = [line for line in lines if "dead-lettered" in line["message"]]
    assert dead_lettered and dead_lettered[-1]["level"] == "warning"


async def test_start_up_objects_are_frozen_out_of_the_garbage_collector(service: ServiceProcess) -> None:
    """A full collection walking every module, class and connection object stalled the event loop for
    45-85 ms under load (the bench's W2 tail); the service moves them out of the collector's reach once
    started."""
    frozen: list[int] = []
    for _ in range(50):
        lines = service.log_records()
        frozen = [
            int(line["message"].rsplit(" ", 1)[1])
            for line in lines
            if line["message"].startswith("start-up objects frozen")
        ]
        if frozen:
            break
        await asyncio.sleep(0.1)
    assert frozen and frozen[0] > 20_000
