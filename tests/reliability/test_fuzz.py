"""Property-based fuzzing (hypothesis) of the decoder, and of the running service over the broker with
random bodies and random valid envelopes: it stays up, answers only the envelope's room, exactly as
documented, and dead-letters everything else."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from livekit_signaling.schemas.codec import InvalidPayload, MalformedEnvelope, decode_command, decode_envelope
from livekit_signaling.schemas.commands import (
    MODERATOR_COMMANDS,
    Close,
    CreateNewAccessToken,
    DisableMicrophoneRestrictions,
    EnableMicrophoneRestrictions,
    ForceMute,
    GrantScreenSharePermission,
    Join,
    Leave,
    RequestPopoutStreamAccessToken,
    RevokeScreenSharePermission,
)
from livekit_signaling.schemas.routing import command_routing_key, participant_routing_key
from testkit.amqp import encode_command
from testkit.cleanup import cleanup
from testkit.load import LoadClient
from testkit.processes import EmulatorProcess, Names, ServiceProcess

pytestmark = pytest.mark.slow

T = TypeVar("T")

ACTIONS = [
    "create_new_access_token",
    "force_mute",
    "grant_screen_share_permission",
    "revoke_screen_share_permission",
    "enable_microphone_restrictions",
    "disable_microphone_restrictions",
    "request_popout_stream_access_token",
    "join",
    "leave",
    "close_room",
]
LIST_FIELD = {
    "force_mute": "participants",
    "grant_screen_share_permission": "participants",
    "revoke_screen_share_permission": "participants",
    "enable_microphone_restrictions": "unrestricted_participants",
}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
ids = st.sampled_from(["p0", "p1", "p2", "p3"])
odd_ids = st.sampled_from(["", "has.a.dot", "a#b", "x" * 129, "white space", "p0"]) | st.text(max_size=12)


@st.composite
def payloads(draw: st.DrawFn) -> Any:
    """Mostly command-shaped payloads (valid or nearly), sometimes any JSON at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)
    action = draw(st.sampled_from([*ACTIONS, "fly_to_the_moon"]))
    payload: dict[str, Any] = {"action": action}
    if action in LIST_FIELD and draw(st.integers(0, 9)) > 0:
        payload[LIST_FIELD[action]] = draw(
            st.lists(ids, max_size=4)
            if draw(st.integers(0, 4)) > 0
            else st.lists(odd_ids, max_size=3) | json_values
        )
    if draw(st.integers(0, 14)) == 0:
        payload[draw(st.text(max_size=8))] = draw(json_values)
    return payload


# -- (a) the decoder ------------------------------------------------------------------------------------


def decode_or_known_error(body: bytes) -> None:
    try:
        envelope = decode_envelope(body)
    except MalformedEnvelope:
        return
    try:
        decode_command(envelope.payload)
    except InvalidPayload:
        return


envelope_fields = st.fixed_dictionaries(
    {},
    optional={
        "room": ids | odd_ids | json_values,
        "participant": ids | odd_ids | json_values,
        "role": st.sampled_from(["moderator", "user", "guest", "admin", ""]) | json_values,
        "kind": st.sampled_from(["user", "guest", "sip", "recorder", "bot"]) | json_values,
        "payload": payloads(),
        "extra": json_values,
    },
)


@settings(max_examples=400, deadline=None, database=None)
@given(st.binary(max_size=600))
def test_decoder_survives_random_bytes(body: bytes) -> None:
    decode_or_known_error(body)


@settings(max_examples=400, deadline=None, database=None)
@given(json_values | envelope_fields)
def test_decoder_survives_random_json_and_envelope_shapes(value: Any) -> None:
    decode_or_known_error(json.dumps(value).encode())


@settings(max_examples=400, deadline=None, database=None)
@given(st.binary(max_size=300) | payloads().map(lambda p: json.dumps(p).encode()))
def test_command_decoder_raises_only_invalid_payload(raw: bytes) -> None:
    try:
        decode_command(msgspec.Raw(raw))
    except InvalidPayload:
        pass


def test_decoder_refuses_oversized_bodies_before_parsing() -> None:
    with pytest.raises(MalformedEnvelope):
        decode_envelope(b"{" * 70_000)


# -- (b) the running service ------------------------------------------------------------------------------


class LoopThread:
    """An event loop in a thread, so that synchronous hypothesis tests can drive an async client."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="fuzz-loop")
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


@dataclass
class Fuzzing:
    service: ServiceProcess
    client: LoadClient
    runner: LoopThread
    examples: int = 0
    messages: Counter[str] | None = None


@pytest.fixture(scope="module")
def fuzzing(emulator_process: EmulatorProcess) -> Iterator[Fuzzing]:
    names = Names()
    service = ServiceProcess(names, emulator_process.url).start()
    runner = LoopThread()
    client = LoadClient(names, name="fuzz-client")
    try:
        runner.run(client.__aenter__())
        runner.run(client.watch_dead_letters())
        state = Fuzzing(service, client, runner, messages=Counter())
        yield state
        print(f"\nservice fuzzing: {state.examples} examples, messages {dict(state.messages or {})}")
    finally:
        runner.run(client.__aexit__())
        runner.stop()
        asyncio.run(cleanup(names, [service], queues=[client.observer_queue_name]))


def expected_events(
    room_roster: set[str], sender: str, role: str, payload_bytes: bytes
) -> tuple[Counter[str], str]:
    """Who hears what from one valid envelope, per the contract's table of commands and their answers
    (docs/contract/index.md; nobody is connected to LiveKit in these rooms, so nobody has a microphone
    track to mute):

    - payload not a command -> one ``invalid_command`` error to the sender;
    - a moderator command from a user or guest -> one ``insufficient_permissions`` error to the sender;
    - join / create_new_access_token / request_popout_stream_access_token -> one event to the sender
      (who is then in the roster);
    - force_mute -> ``force_muted`` to nobody here; one ``unknown_participants`` error to the sender iff a
      target is not in the roster (so nothing at all when every target is known but not connected, or
      there are none);
    - grant/revoke_screen_share_permission -> one ``screen_share_permissions_updated`` to the sender, plus
      one ``unknown_participants`` error iff a target is not in the roster;
    - enable/disable_microphone_restrictions -> one event to every participant in the roster (the sender
      only if in it);
    - leave -> nothing (the sender leaves the roster); close_room -> nothing (the roster is emptied).

    Returns the expected count per recipient and the action (or "invalid")."""
    expected: Counter[str] = Counter()
    try:
        command = decode_command(msgspec.Raw(payload_bytes))
    except InvalidPayload:
        expected[sender] += 1
        return expected, "invalid"
    action = str(type(command).__struct_config__.tag)
    if isinstance(command, MODERATOR_COMMANDS) and role != "moderator":
        expected[sender] += 1
        return expected, action
    match command:
        case Join() | CreateNewAccessToken() | RequestPopoutStreamAccessToken():
            expected[sender] += 1
            room_roster.add(sender)
        case ForceMute(participants=targets):
            if set(targets) - room_roster:
                expected[sender] += 1
        case (
            GrantScreenSharePermission(participants=targets)
            | RevokeScreenSharePermission(participants=targets)
        ):
            expected[sender] += 1 + (1 if set(targets) - room_roster else 0)
        case EnableMicrophoneRestrictions() | DisableMicrophoneRestrictions():
            for participant in room_roster:
                expected[participant] += 1
        case Leave():
            room_roster.discard(sender)
        case Close():
            room_roster.clear()
    return expected, action


@st.composite
def messages(draw: st.DrawFn) -> tuple[str, Any]:
    kind = draw(
        st.sampled_from(["command"] * 6 + ["garbage_bytes", "garbage_json", "bad_envelope", "misaddressed"])
    )
    if kind == "garbage_bytes":
        return kind, draw(st.binary(max_size=200))
    if kind in ("garbage_json", "bad_envelope"):
        return kind, draw(json_values if kind == "garbage_json" else envelope_fields)
    envelope: dict[str, Any] = {
        "participant": draw(ids),
        "role": draw(st.sampled_from(["moderator", "user", "guest"])),
        "payload": draw(payloads()),
    }
    if draw(st.booleans()):
        envelope["kind"] = draw(st.sampled_from(["user", "guest", "sip", "recorder"]))
    return kind, envelope


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(messages(), min_size=1, max_size=6))
def test_service_survives_random_traffic_answers_only_its_room_and_exactly_as_documented(
    fuzzing: Fuzzing, batch: list[tuple[str, Any]]
) -> None:
    service, client, runner = fuzzing.service, fuzzing.client, fuzzing.runner
    room, other_room = str(uuid.uuid4()), str(uuid.uuid4())
    tag = uuid.uuid4().hex
    roster: set[str] = set()
    expectations: dict[str, tuple[Counter[str], str, str]] = {}  # message id -> (recipients, sender, action)
    dead_expected = 0
    outgoing: list[tuple[bytes, str, str]] = []  # body, routing key, message id
    for kind, value in batch:
        assert fuzzing.messages is not None
        fuzzing.messages[kind] += 1
        message_id = uuid.uuid4().hex
        if kind in {"command", "misaddressed"}:
            envelope = {"room": room, **value}
            body = json.dumps(envelope).encode()
            if kind == "misaddressed":
                outgoing.append((body, command_routing_key(other_room), message_id))
                dead_expected += 1
                continue
            payload_bytes = json.dumps(value["payload"]).encode()
            recipients, action = expected_events(roster, value["participant"], value["role"], payload_bytes)
            expectations[message_id] = (recipients, value["participant"], action)
            outgoing.append((body, command_routing_key(room), message_id))
        else:
            body = value if isinstance(value, bytes) else json.dumps(value).encode()
            try:
                decode_envelope(body)
            except MalformedEnvelope:
                pass
            else:
                assume(False)  # a random value that happens to be a valid envelope: not garbage
            outgoing.append((body, command_routing_key(room), message_id))
            dead_expected += 1
    sentinel = uuid.uuid4().hex
    outgoing.append(
        (
            encode_command(room, "sentinel", {"action": "create_new_access_token"}),
            command_routing_key(room),
            sentinel,
        )
    )

    async def run() -> tuple[list[Any], int]:
        for body, routing_key, message_id in outgoing:
            await client.publish_once(body, routing_key, message_id=message_id, headers={"x-fuzz": tag})
        # The sentinel's answer comes after every earlier command of the room has been answered.
        await client.answer_to(sentinel, timeout=15)

        def dead_count() -> int:
            return sum(1 for m in client.dead_letters if (m.headers or {}).get("x-fuzz") == tag)

        await client.wait_until(lambda: dead_count() >= dead_expected, timeout=10)
        await asyncio.sleep(0.1)
        return list(client.books.events), dead_count()

    events, dead = runner.run(run())
    fuzzing.examples += 1
    ours = {message_id for _, _, message_id in outgoing}
    for event in events:
        if event.correlation_id in ours:
            # Never another room: the body's room and the routing key are the envelope's.
            assert event.room == room, event.body
            assert event.routing_key == participant_routing_key(room, event.participant), event.routing_key
    for message_id, (recipients, sender, action) in expectations.items():
        got = Counter(e.participant for e in events if e.correlation_id == message_id)
        assert got == recipients, (action, sender, dict(got), dict(recipients))
    assert dead == dead_expected, (dead, dead_expected, [k for k, _ in batch])
    assert service.process is not None and service.process.poll() is None, service.logs()[-2000:]
    assert service.http("/healthz")[0] == 200


def test_fuzzed_service_is_still_healthy_and_counted_its_dead_letters(fuzzing: Fuzzing) -> None:
    """After the fuzzing above (same module-scoped service): alive, healthy, ready, and its dead-letter
    metric agrees with what reached the dead-letter queue."""
    service = fuzzing.service
    time.sleep(0.5)
    assert service.process is not None and service.process.poll() is None
    assert service.http("/healthz")[0] == 200
    assert service.is_ready()
    dead_letters = service.metric("livekit_signaling_dead_letters_total")
    print(
        f"\nservice fuzzing: {fuzzing.examples} examples; dead-letter queue received "
        f"{len(fuzzing.client.dead_letters)}, metric says {dead_letters:.0f}"
    )
    assert dead_letters == len(fuzzing.client.dead_letters)
