"""The public client (``livekit_signaling.client``) under the shipped controller permissions
(deploy/rabbitmq/*.json in the test's vhost): it needs no more than a controller may do, its commands
carry the user RabbitMQ checks (the service trusts only its controllers), and a controller confined to
its rooms is told, not left waiting, when it asks for another room."""

from __future__ import annotations

import uuid

import pytest

from livekit_signaling.client import NotPermitted, SignalingClient
from livekit_signaling.schemas.events import MicrophoneRestrictionsEnabled
from testkit.broker_accounts import CONFINED_ROOM_PREFIX, BrokerAccounts
from testkit.processes import ServiceProcess


def pid() -> str:
    return str(uuid.uuid4())


def client_of(accounts: BrokerAccounts, user: str) -> SignalingClient:
    return SignalingClient(
        accounts.url(user),
        command_exchange=accounts.names.command_exchange,
        event_exchange=accounts.names.event_exchange,
        timeout=8.0,
    )


async def test_the_client_needs_no_more_than_a_controllers_permissions(
    secured_service: ServiceProcess, accounts: BrokerAccounts
) -> None:
    room, moderator, user = f"client-{pid()}", pid(), pid()
    async with client_of(accounts, accounts.controller) as client, client.events(room) as events:
        # Answered: the service, which acts only on its trusted controllers, took the commands' user_id.
        await client.join(room, moderator, role="moderator")
        await client.join(room, user)
        enabled = await client.enable_microphone_restrictions(room, moderator, [])
        assert enabled == MicrophoneRestrictionsEnabled(unrestricted_participants=[])
        seen = [await anext(events) for _ in range(4)]
    assert [e.participant for e in seen] == [moderator, user, moderator, user]


async def test_a_confined_controller_is_refused_other_rooms_at_once(
    secured_service: ServiceProcess, accounts: BrokerAccounts
) -> None:
    own, other = f"{CONFINED_ROOM_PREFIX}{pid()}", f"elsewhere-{pid()}"
    async with client_of(accounts, accounts.confined_controller) as client:
        joined = await client.join(own, pid())
        assert joined.credentials.room == own
        with pytest.raises(NotPermitted, match="ACCESS_REFUSED"):
            await client.join(other, pid())
        with pytest.raises(NotPermitted, match="ACCESS_REFUSED"):
            async with client.events(other):
                pass
        assert client.waiting == 0
        # The refusal closed a channel; the client carries on in its own rooms.
        joined = await client.join(own, pid())
        assert joined.credentials.room == own
