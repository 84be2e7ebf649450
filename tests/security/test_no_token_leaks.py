"""A LiveKit access token is a bearer credential for its room: it goes to its participant's routing key
and nowhere else, not into the dead-letter queue (where an event nobody is bound for ends up), not into a
log line (the service runs at DEBUG here), not into a metric label."""

from __future__ import annotations

import json
import re
import uuid

from aio_pika.abc import AbstractIncomingMessage

from testkit.broker_accounts import CONFINED_ROOM_PREFIX, BrokerAccounts
from testkit.processes import ServiceProcess
from tests.security.conftest import wait_dead_letter

JWT = re.compile(rb"eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


async def test_tokens_reach_only_their_participant(
    accounts: BrokerAccounts, secured_service: ServiceProcess, dead_letters: list[AbstractIncomingMessage]
) -> None:
    room = f"{CONFINED_ROOM_PREFIX}{uuid.uuid4()}"
    listener, absent = str(uuid.uuid4()), str(uuid.uuid4())
    # A (trusted) controller confined to its rooms, listening to one participant's key only: the events
    # of the other participant have no queue, and are dead-lettered as unroutable.
    async with accounts.client(
        accounts.confined_controller, binding=f"room.{room}.participant.{listener}"
    ) as controller:
        tokens = [
            (await controller.reply(room, listener, {"action": "join"})).payload["credentials"]["token"],
            (await controller.reply(room, listener, {"action": "create_new_access_token"})).payload["token"],
            (
                await controller.reply(room, listener, {"action": "request_popout_stream_access_token"})
            ).payload["token"],
        ]
        await controller.send(room, absent, {"action": "join"})
        await controller.send(room, absent, {"action": "request_popout_stream_access_token"})
        unroutable = [
            await wait_dead_letter(dead_letters, room.encode(), b'"message":"join_success"'),
            await wait_dead_letter(dead_letters, room.encode(), b'"message":"popout_stream_access_token"'),
        ]
    assert all(JWT.fullmatch(token.encode()) for token in tokens), "the pattern must recognise a token"

    # The unroutable events are kept for whoever reads the dead letters, without their tokens.
    for letter in unroutable:
        assert letter.headers is not None and letter.headers["x-signaling-reason"] == "unroutable_event"
        assert letter.headers["x-original-routing-key"] == f"room.{room}.participant.{absent}"
    credentials = json.loads(unroutable[0].body)["payload"]["credentials"]
    assert credentials["token"] == "[redacted]" and credentials["room"] == room
    assert json.loads(unroutable[1].body)["payload"]["token"] == "[redacted]"

    metrics = secured_service.http("/metrics")[1].encode()
    logs = secured_service.logs().encode()
    assert room.encode() in logs, "the log is the service's, and covers this room's commands"
    for where, text in [
        *(("dead-letter queue", letter.body + repr(letter.headers).encode()) for letter in dead_letters),
        ("service log", logs),
        ("metrics", metrics),
    ]:
        assert not JWT.search(text), f"a token in the {where}"
        for token in tokens:
            assert token.encode() not in text, f"a token in the {where}"
