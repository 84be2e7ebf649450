"""``SIGNALING_TRUSTED_PUBLISHERS``: a user who may write to the command exchange but is not trusted
cannot act as a moderator. Its command changes nothing in LiveKit, is answered by nobody, and lands in
the dead-letter queue with ``untrusted_publisher``, counted, logged without its body."""

from __future__ import annotations

import asyncio
import json
import os
import uuid

from aio_pika.abc import AbstractIncomingMessage

from testkit.amqp import SignalingClient
from testkit.broker_accounts import BrokerAccounts
from testkit.emulator import Emulator, microphone_tracks
from testkit.processes import ServiceProcess, cli_send
from tests.security.conftest import wait_dead_letter


def pid() -> str:
    return str(uuid.uuid4())


async def room_with_a_speaker(controller: SignalingClient, emulator: Emulator) -> tuple[str, str, str]:
    """A room with a moderator and a user whose microphone is live in LiveKit."""
    room, moderator, speaker = pid(), pid(), pid()
    await controller.reply(room, moderator, {"action": "join"}, role="moderator")
    joined = await controller.reply(room, speaker, {"action": "join"})
    await emulator.connect(joined.payload["credentials"]["token"])
    await emulator.publish(room, speaker, "microphone")
    return room, moderator, speaker


async def microphone_muted(emulator: Emulator, room: str, participant: str) -> bool:
    [microphone] = microphone_tracks(await emulator.participant(room, participant))
    return bool(microphone.muted)


async def test_untrusted_force_mute_changes_nothing_and_is_dead_lettered(
    accounts: BrokerAccounts,
    secured_service: ServiceProcess,
    controller: SignalingClient,
    emulator: Emulator,
    dead_letters: list[AbstractIncomingMessage],
) -> None:
    room, moderator, speaker = await room_with_a_speaker(controller, emulator)
    dead_lettered = secured_service.metric(
        "livekit_signaling_dead_letters_total", reason="untrusted_publisher"
    )
    counted = secured_service.metric("livekit_signaling_commands_total", outcome="untrusted_publisher")
    force_mute = {"action": "force_mute", "participants": [speaker]}

    # The rogue has a controller's permissions and claims to be the room's real moderator.
    async with accounts.client(accounts.rogue) as rogue:
        message_id = await rogue.send(room, moderator, force_mute, role="moderator")

    letter = await wait_dead_letter(dead_letters, f'"room": "{room}"'.encode())
    assert letter.headers is not None
    reason = str(letter.headers["x-signaling-reason"])
    assert reason.startswith("untrusted_publisher") and accounts.rogue in reason
    assert json.loads(letter.body)["payload"] == force_mute

    await controller.quiet(0.5)
    assert not await microphone_muted(emulator, room, speaker)
    assert [e for e in controller.events_for(room) if e.correlation_id == message_id] == []
    assert (
        secured_service.wait_metric(
            "livekit_signaling_dead_letters_total", dead_lettered + 1, reason="untrusted_publisher"
        )
        == dead_lettered + 1
    )
    assert (
        secured_service.metric("livekit_signaling_commands_total", outcome="untrusted_publisher")
        == counted + 1
    )
    [line] = [line for line in secured_service.logs().splitlines() if message_id in line]
    assert "untrusted_publisher" in line
    assert room not in line and speaker not in line and "force_mute" not in line

    # The control: the same command from the trusted controller is acted on.
    answer = await controller.reply(room, moderator, force_mute, role="moderator")
    assert answer.message == "force_muted"
    assert await microphone_muted(emulator, room, speaker)


async def test_command_without_user_id_is_not_trusted(
    accounts: BrokerAccounts,
    controller: SignalingClient,
    emulator: Emulator,
    dead_letters: list[AbstractIncomingMessage],
) -> None:
    """Even from a trusted user's connection: without ``user_id`` nothing says who published it."""
    room, moderator, speaker = await room_with_a_speaker(controller, emulator)
    async with SignalingClient(
        accounts.names, name="no-user-id", url=accounts.url(accounts.controller), least_privilege=True
    ) as anonymous:
        force_mute = {"action": "force_mute", "participants": [speaker]}
        await anonymous.send(room, moderator, force_mute, role="moderator")
    letter = await wait_dead_letter(dead_letters, f'"room": "{room}"'.encode())
    assert letter.headers is not None
    assert str(letter.headers["x-signaling-reason"]) == "untrusted_publisher: the command has no user_id"
    await controller.quiet(0.5)
    assert not await microphone_muted(emulator, room, speaker)


async def test_send_cli_publishes_as_its_own_user(
    accounts: BrokerAccounts, secured_service: ServiceProcess, emulator: Emulator
) -> None:
    """``livekit-signaling send`` with a controller's credentials: it needs no more than a controller's
    permissions and its ``user_id`` makes it a trusted publisher."""
    room, participant = pid(), pid()
    env = {
        **os.environ,
        "AMQP_URL": accounts.url(accounts.controller),
        "SIGNALING_COMMAND_EXCHANGE": accounts.names.command_exchange,
        "SIGNALING_EVENT_EXCHANGE": accounts.names.event_exchange,
    }
    routing_key, answer = await asyncio.to_thread(
        cli_send, env, room, participant, {"action": "join"}, role="moderator", timeout=3
    )
    assert routing_key == f"room.{room}.participant.{participant}"
    assert answer["payload"]["message"] == "join_success"
