"""The console's parts without RabbitMQ or the emulator: what it keeps of the traffic, how a room is shown,
the JSON the page reads, and the parts that talk to the outside, against small fakes."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from livekit_signaling.client import Answers, CommandError, ReceivedEvent, Sent
from livekit_signaling.console import stream as stream_module
from livekit_signaling.console import traffic as traffic_module
from livekit_signaling.console.clients import SimulatedClients
from livekit_signaling.console.controller import TRACE_UPDATE_SECONDS, Controller
from livekit_signaling.console.room_watch import RoomWatch
from livekit_signaling.console.rooms import is_gone, room_view
from livekit_signaling.console.stream import LiveStream
from livekit_signaling.console.traffic import Traffic, token_claims
from livekit_signaling.console.views import (
    ClientRequest,
    Refused,
    Snapshot,
    livekit_rooms,
    to_json,
)
from livekit_signaling.console.waterfall import waterfall
from livekit_signaling.domain.permissions import PublishPolicy, TokenGrant
from livekit_signaling.domain.state import RoomDecisions, RoomState, RosterEntry
from livekit_signaling.emulator.control import ControlAnswer, EmulatorControl
from livekit_signaling.livekit.tokens import TokenMinter
from livekit_signaling.reconcile.recent import RecordedRepair
from livekit_signaling.schemas import codec
from livekit_signaling.schemas.commands import CreateNewAccessToken
from livekit_signaling.schemas.events import (
    Credentials,
    CredentialsEvent,
    ErrorEvent,
    Event,
    EventEnvelope,
    ForceMuted,
    JoinSuccess,
    MicrophoneRestrictionsEnabled,
    PopoutStreamAccessToken,
    RestrictionsDisabledState,
)
from livekit_signaling.telemetry.tracing.kept import ControllerTraces, KeptSpan, KeptTraces


def token(room: str, identity: str, ttl: int = 60) -> str:
    grant = TokenGrant(
        room=room,
        identity=identity,
        publish_sources=frozenset({"camera"}),
        can_publish_data=True,
        hidden=False,
    )
    return TokenMinter("devkey", "secret-" + "x" * 32, ttl_seconds=ttl).issue(grant)


def event_body(room: str, participant: str, payload: Event) -> bytes:
    return codec.encode_event(EventEnvelope(room=room, participant=participant, payload=payload))


def page_json(value: object) -> Any:
    """``value`` as the page's script reads it."""
    return msgspec.json.decode(to_json(value))


# -- traffic --------------------------------------------------------------------------------------------


def test_events_are_addressed_by_routing_key_and_answer_their_command() -> None:
    traffic = Traffic()
    command = traffic.record_command("m1", "room.r", b'{"room":"r"}')
    body = event_body("r", "alice", ForceMuted(moderator="mod"))
    event, answered = traffic.record_event("room.r.participant.alice", "m1", body)
    assert (event.room, event.recipient, event.message) == ("r", "alice", "force_muted")
    assert event.body == EventEnvelope(room="r", participant="alice", payload=ForceMuted(moderator="mod"))
    assert answered is command
    assert command.answers == [event]
    _, unrelated = traffic.record_event("room.r.participant.bob", "other", body)
    assert unrelated is None
    assert [e.seq for e in traffic.events] == [1, 2]


@pytest.mark.parametrize("body", [b"\xffnot json", b'{"room": "r", "payload": {"message": "dance"}}'])
def test_a_body_that_is_not_an_event_is_kept_as_text(body: bytes) -> None:
    event, _ = Traffic().record_event("room.r.participant.a", None, body)
    assert event.message == "?"
    assert isinstance(event.body, str)
    assert event.body == body.decode(errors="replace")


def test_history_is_bounded() -> None:
    traffic = Traffic()
    for n in range(traffic_module.COMMAND_HISTORY + 5):
        traffic.record_command(f"m{n}", "room.r", b"{}")
    assert len(traffic.commands) == traffic_module.COMMAND_HISTORY
    assert "m0" not in traffic.commands
    command = next(iter(traffic.commands.values()))
    body = event_body("r", "p", MicrophoneRestrictionsEnabled(unrestricted_participants=[]))
    for _ in range(traffic_module.EVENT_HISTORY + 5):
        traffic.record_event("room.r.participant.p", command.message_id, body)
    assert len(command.answers) == traffic_module.ANSWERS_PER_COMMAND
    assert command.answer_count == traffic_module.EVENT_HISTORY + 5
    assert len(traffic.events) == traffic_module.EVENT_HISTORY
    assert traffic.events[0].seq == 6


def test_tokens_are_kept_per_identity_of_the_token_while_valid() -> None:
    traffic = Traffic()
    join_token, popout_token = token("r", "alice"), token("r", "alice.popout1")
    join_success = JoinSuccess(
        credentials=Credentials(room="r", token=join_token, public_url="http://x"),
        microphone_restriction_state=RestrictionsDisabledState(),
    )
    traffic.record_event("room.r.participant.alice", None, event_body("r", "alice", join_success))
    popout = PopoutStreamAccessToken(token=popout_token)
    traffic.record_event("room.r.participant.alice", None, event_body("r", "alice", popout))
    assert traffic.token_for("r", "alice") == join_token
    # The popout's token belongs to the popout identity it names, not to the event's recipient.
    assert traffic.token_for("r", "alice.popout1") == popout_token
    assert traffic.token_for("other", "alice") is None

    # A token about to expire is not handed to a client (it would be refused mid-connect).
    short = token("r", "bob", ttl=int(traffic_module.TOKEN_MARGIN_SECONDS) - 2)
    credentials = CredentialsEvent(room="r", token=short, public_url="http://x")
    traffic.record_event("room.r.participant.bob", None, event_body("r", "bob", credentials))
    assert not traffic.has_token("r", "bob")
    claims = token_claims(short)
    assert claims is not None
    assert claims.sub == "bob"
    assert claims.exp > time.time()

    traffic.forget_room("r")
    assert traffic.token_for("r", "alice") is None
    assert token_claims("not a token") is None
    assert token_claims("a.e30.b") is None  # a JWT without the claims needed


# -- rooms ----------------------------------------------------------------------------------------------


def emulator_participant(identity: str, *sources: str, hidden: bool = False) -> dict[str, object]:
    """A participant as the emulator's ``GET /_emulator/rooms`` answers it."""
    return {
        "identity": identity,
        "sid": f"PA_{identity}",
        "state": "ACTIVE",
        "kind": "STANDARD",
        "permission": {
            "can_publish": not hidden,
            "can_publish_sources": [],
            "can_subscribe": True,
            "can_publish_data": True,
            "hidden": hidden,
        },
        "tracks": [{"sid": f"TR_{s}", "source": s, "muted": False} for s in sources],
    }


def emulator_room(name: str, *participants: dict[str, object]) -> dict[str, object]:
    return {"name": name, "sid": f"RM_{name}", "participants": list(participants)}


def test_room_view_puts_roster_popouts_and_unknown_identities_side_by_side() -> None:
    state = RoomState(
        version=3,
        participants={
            "mod": RosterEntry(role="moderator", kind="user"),
            "alice": RosterEntry(role="user", kind="user", popouts=2),
        },
        decisions=RoomDecisions(microphone_restrictions=["mod"]),
    )
    [livekit] = livekit_rooms(
        [
            emulator_room(
                "r",
                emulator_participant("stranger", "microphone"),
                emulator_participant("alice.popout2", hidden=True),
                emulator_participant("alice", "camera"),
            )
        ]
    )
    view = page_json(
        room_view(
            "r",
            state,
            livekit,
            has_token=lambda identity: identity == "mod",
            outcomes={"alice": "published camera"},
        )
    )
    rows = view["participants"]
    assert [row["identity"] for row in rows] == ["mod", "alice", "alice.popout1", "alice.popout2", "stranger"]
    mod, alice, popout1, popout2, stranger = rows
    assert mod["roster"] == {"role": "moderator", "kind": "user", "popouts": 0}
    assert (mod["livekit"], mod["has_token"], mod["outcome"]) == (None, True, None)
    assert alice["livekit"]["tracks"] == [{"sid": "TR_camera", "source": "camera", "muted": False}]
    assert alice["outcome"] == "published camera"
    assert (popout1["popout_of"], popout1["livekit"]) == ("alice", None)
    # What LiveKit holds is shown as the emulator said it.
    assert popout2["livekit"] == emulator_participant("alice.popout2", hidden=True)
    assert (stranger["roster"], stranger["popout_of"]) == (None, None)
    assert view["state"] == {"version": 3, "microphone_restrictions": ["mod"], "screen_share": {}}
    assert view["livekit"] == {"sid": "RM_r"}
    assert view["state_error"] is None


def test_room_view_shows_each_identitys_drift_and_the_latest_repairs_first() -> None:
    state = RoomState(
        version=4,
        participants={
            "mod": RosterEntry(role="moderator", kind="user"),
            "late": RosterEntry(role="user", kind="user"),
            "granted": RosterEntry(role="user", kind="user"),
        },
        decisions=RoomDecisions(microphone_restrictions=[], screen_share={"granted": True}),
    )
    [livekit] = livekit_rooms(
        [
            emulator_room(
                "r",
                emulator_participant("mod"),
                emulator_participant("late"),  # everything: a token from before the restriction
                {
                    **emulator_participant("granted"),
                    "permission": {
                        "can_publish": True,
                        "can_publish_sources": ["camera"],
                        "can_subscribe": True,
                        "can_publish_data": True,
                        "hidden": False,
                    },
                },
                emulator_participant("stranger"),
            )
        ]
    )
    repairs = [
        RecordedRepair(1.0, "late", ("microphone",), ("camera", "screen_share", "screen_share_audio")),
        RecordedRepair(2.0, "gone", ("unknown_identity",), None),
    ]
    view = page_json(
        room_view(
            "r",
            state,
            livekit,
            policy=PublishPolicy(screen_share_requires_permission=True),
            repairs=repairs,
        )
    )
    drift = {row["identity"]: (row["drift"], row["repair_to"]) for row in view["participants"]}
    assert drift == {
        "mod": ([], None),
        "late": (["microphone", "screen_share"], ["camera"]),
        "granted": (["screen_share"], ["camera", "screen_share", "screen_share_audio"]),
        "stranger": (["unknown_identity"], None),
    }
    assert [(r["identity"], r["sources"]) for r in view["repairs"]] == [
        ("gone", None),
        ("late", ["camera", "screen_share", "screen_share_audio"]),
    ]


def test_a_room_is_gone_when_neither_side_knows_it() -> None:
    [empty] = livekit_rooms([emulator_room("r")])
    assert is_gone(RoomState(), None)
    assert not is_gone(RoomState(), empty)
    assert not is_gone(RoomState(version=1, participants={"a": RosterEntry(role="user", kind="user")}), None)
    # Enabled restrictions with nobody in the room are still state worth showing.
    assert not is_gone(RoomState(version=2, decisions=RoomDecisions(microphone_restrictions=[])), None)
    view = page_json(room_view("r", None, None, state_error="state store unavailable"))
    assert (view["state"], view["state_error"], view["participants"]) == (None, "state store unavailable", [])
    assert view["livekit"] is None


def test_an_emulator_answer_of_another_shape_is_refused_with_its_path() -> None:
    broken = emulator_room("r", {**emulator_participant("a"), "tracks": [{"sid": "TR_1"}]})
    with pytest.raises(msgspec.ValidationError, match=r"\$\[0\]\.participants\[0\]\.tracks\[0\]"):
        livekit_rooms([broken])


# -- the JSON the page reads ----------------------------------------------------------------------------


def test_the_snapshot_carries_what_the_page_reads_and_commands_as_published() -> None:
    traffic = Traffic()
    published = b'{"room":"r","participant":"x","payload":{"action":"dance"},"extra":[1, 2]}'
    traffic.record_command("m1", "room.r", published)
    body = event_body("r", "x", ForceMuted(moderator="mod"))
    traffic.record_event("room.r.participant.x", "m1", body)
    snapshot = Snapshot(
        rooms=[],
        livekit_error="the emulated LiveKit did not answer (ClientConnectorError)",
        webhooks=False,
        amqp_connected=True,
        commands=list(traffic.commands.values()),
        events=list(traffic.events),
    )
    page = page_json(snapshot)
    assert page.keys() == {"rooms", "livekit_error", "webhooks", "amqp_connected", "commands", "events"}
    [command] = page["commands"]
    assert command.keys() == {
        "message_id", "at", "routing_key", "body", "answers", "answer_count", "trace_id", "trace"
    }  # fmt: skip
    # The "send anything" form's envelope is shown as published, unknown fields and all.
    assert command["body"] == msgspec.json.decode(published)
    assert b'"extra":[1, 2]' in to_json(snapshot)
    [event] = page["events"]
    assert command["answers"] == [event]
    assert event == {
        "seq": 1,
        "at": event["at"],
        "routing_key": "room.r.participant.x",
        "room": "r",
        "recipient": "x",
        "message": "force_muted",
        "correlation_id": "m1",
        "body": msgspec.json.decode(body),
    }


# -- codec: what the console reads of the contract ------------------------------------------------------


def test_an_envelope_room_is_read_leniently_and_only_from_an_object() -> None:
    assert codec.envelope_room(b'{"room":"r","payload":"anything","role":"king"}') == "r"
    for body, reason in (
        (b'{"participant":"x"}', "room"),
        (b'{"room":""}', "length"),
        (b"[1]", "object"),
        (b"{", "truncated"),
    ):
        with pytest.raises(codec.MalformedEnvelope, match=reason):
            codec.envelope_room(body)


def test_events_decode_into_their_variant() -> None:
    body = event_body("r", "a", ForceMuted(moderator="m"))
    assert codec.decode_event(body).payload == ForceMuted(moderator="m")
    with pytest.raises(codec.MalformedEvent, match="message"):
        codec.decode_event(b'{"room":"r","participant":"a","payload":{"message":"dance"}}')


# -- the live stream ------------------------------------------------------------------------------------


def stream_app(stream: LiveStream, reset: Callable[[], Awaitable[object]]) -> web.Application:
    async def serve(request: web.Request) -> web.StreamResponse:
        return await stream.serve(request, reset)

    app = web.Application()
    app.router.add_get("/stream", serve)
    return app


async def read_events(client: TestClient[web.Request, web.Application]) -> list[str]:
    """The lines of a whole stream, up to its end."""
    async with client.get("/stream") as response:
        return [
            line.decode().rstrip("\n") for line in [raw async for raw in response.content] if line != b"\n"
        ]


async def test_a_page_gets_a_reset_first_and_is_dropped_when_too_far_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stream_module, "SUBSCRIBER_BACKLOG", 3)
    stream = LiveStream()
    reset = asyncio.Event()

    async def everything() -> dict[str, int]:
        reset.set()
        return {"n": 0}

    async with TestClient(TestServer(stream_app(stream, everything))) as client:
        reading = asyncio.create_task(read_events(client))
        await asyncio.wait_for(reset.wait(), 5)
        assert stream.is_watched
        for n in range(1, 6):  # more than the backlog, before the page can read any
            stream.broadcast("event", {"n": n})
        lines = await asyncio.wait_for(reading, 5)
    assert lines == [
        "event: reset",
        'data: {"n":0}',
        # The oldest is dropped for the end of the stream; the page reconnects and starts over.
        "event: event",
        'data: {"n":2}',
        "event: event",
        'data: {"n":3}',
    ]
    assert not stream.is_watched


async def test_an_idle_stream_is_kept_alive_and_ended_at_shutdown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream_module, "KEEPALIVE_SECONDS", 0.01)
    stream = LiveStream()

    async def everything() -> dict[str, int]:
        return {}

    async with (
        TestClient(TestServer(stream_app(stream, everything))) as client,
        client.get("/stream") as response,
    ):
        assert response.headers["Content-Type"] == "text/event-stream"
        assert await response.content.readline() == b"event: reset\n"
        await response.content.readline()
        await response.content.readline()
        assert await response.content.readline() == stream_module.KEEPALIVE.splitlines(keepends=True)[0]
        stream.end()
        await asyncio.wait_for(response.content.read(), 5)  # the stream ends


# -- the controller and the simulated clients, against fakes ---------------------------------------------


class FakeLink:
    """The client as the console sees it: a credentials request is answered at once, and the answer
    passes on the event stream before the call returns (the broker may deliver it before the confirm)."""

    def __init__(self, reply: Event | None) -> None:
        self.reply = reply
        self.asked: list[tuple[str, str, str, str, str | None]] = []
        #: What ``publish_raw`` got, with the span current when it was called (whose context the real
        #: client publishes with the command).
        self.published: list[tuple[str, bytes, trace.SpanContext]] = []
        self.is_connected = True
        self._events: asyncio.Queue[ReceivedEvent] = asyncio.Queue()

    async def open(self) -> None:
        pass

    @contextlib.asynccontextmanager
    async def events(self) -> AsyncIterator[AsyncIterator[ReceivedEvent]]:
        yield self._stream()

    async def _stream(self) -> AsyncIterator[ReceivedEvent]:
        while True:
            received = await self._events.get()
            self._events.task_done()
            yield received

    async def publish_raw(self, room: str, body: bytes, *, message_id: str | None = None) -> Sent:
        self.published.append((room, body, trace.get_current_span().get_span_context()))
        return Sent(message_id=message_id or "", room=room)

    async def create_new_access_token(
        self,
        room: str,
        participant: str,
        *,
        role: str,
        kind: str,
        message_id: str | None,
        timeout: float | None,
    ) -> CredentialsEvent:
        self.asked.append((room, participant, role, kind, message_id))
        assert self.reply is not None
        received = ReceivedEvent(
            routing_key=f"room.{room}.participant.{participant}",
            correlation_id=message_id,
            message_id=f"{message_id}:0",
            event=EventEnvelope(room=room, participant=participant, payload=self.reply),
        )
        self._events.put_nowait(received)
        await self._events.join()  # the console's watch has taken it
        if isinstance(self.reply, ErrorEvent):
            answers = Answers(
                message_id=message_id or "", sender=participant, events=(received,), complete=True
            )
            raise CommandError(self.reply, answers)
        assert isinstance(self.reply, CredentialsEvent)
        return self.reply

    async def close(self) -> None:
        pass


class FakeEmulator(EmulatorControl):
    def __init__(self, rooms: list[dict[str, object]]) -> None:
        super().__init__("http://emulator.invalid")
        self.snapshot = rooms
        self.calls: list[tuple[str, ...]] = []

    async def rooms(self) -> list[dict[str, Any]]:
        return self.snapshot

    async def connect(self, token: str) -> ControlAnswer:
        self.calls.append(("connect", token))
        return ControlAnswer(200, {})

    async def set_muted(self, room: str, identity: str, track_sid: str, muted: bool) -> ControlAnswer:
        self.calls.append(("mute" if muted else "unmute", track_sid))
        return ControlAnswer(200, {})


#: The console's event watches the tests start (held, so that they are not collected while running).
watching: set[asyncio.Task[None]] = set()


async def simulated_clients(
    link: FakeLink, emulator: FakeEmulator, roster: dict[str, RosterEntry], traffic: Traffic
) -> SimulatedClients:
    """Simulated clients of a room with ``roster``, their console connected through ``link``."""

    async def load_room(_name: str) -> RoomState:
        return RoomState(participants=roster)

    controller = Controller(link, traffic=traffic, stream=LiveStream(), on_room=lambda _room: None)
    await controller.connect()
    watching.add(asyncio.create_task(controller.watch()))
    return SimulatedClients(emulator=emulator, load_room=load_room, traffic=traffic, controller=controller)


async def test_a_client_without_a_token_asks_for_credentials_with_a_valid_envelope() -> None:
    fresh = token("r", "erin")
    link = FakeLink(CredentialsEvent(room="r", token=fresh, public_url="http://x"))
    emulator, traffic = FakeEmulator([]), Traffic()
    clients = await simulated_clients(
        link, emulator, {"erin": RosterEntry(role="moderator", kind="sip")}, traffic
    )
    outcome = await clients.act("connect", ClientRequest(room="r", participant="erin"))
    assert outcome.outcome == "connected with fresh credentials (create_new_access_token)"
    assert emulator.calls == [("connect", fresh)]
    # What the console asked for is shown as the envelope the service takes, as that participant.
    [command] = traffic.commands.values()
    assert link.asked == [("r", "erin", "moderator", "sip", command.message_id)]
    envelope = codec.decode_envelope(bytes(command.body))
    assert command.routing_key == "room.r"
    assert (envelope.participant, envelope.role, envelope.kind) == ("erin", "moderator", "sip")
    assert codec.decode_command(envelope.payload) == CreateNewAccessToken()
    assert [answer.message for answer in command.answers] == ["credentials"]
    # Now the console knows a valid token: the next connect uses it without asking.
    await clients.act("connect", ClientRequest(room="r", participant="erin"))
    assert len(link.asked) == 1


async def test_client_requests_that_cannot_be_tried_are_refused() -> None:
    link = FakeLink(ErrorEvent(error="insufficient_permissions"))  # not credentials
    roster = {"erin": RosterEntry(role="user", kind="user")}
    clients = await simulated_clients(link, FakeEmulator([]), roster, Traffic())
    for action, request, status, reason in (
        ("dance", ClientRequest(room="r", participant="erin"), 404, "no client action"),
        ("publish", ClientRequest(room="r", participant="erin", source="hologram"), 400, '"source"'),
        ("connect", ClientRequest(room="r", participant="stranger"), 400, "send a join"),
        ("connect", ClientRequest(room="r", participant="erin"), 400, "instead of credentials"),
    ):
        with pytest.raises(Refused, match=reason) as refused:
            await clients.act(action, request)
        assert refused.value.status == status
    link.is_connected = False
    with pytest.raises(Refused, match="not connected to RabbitMQ") as refused:
        await clients.act("connect", ClientRequest(room="r", participant="erin"))
    assert refused.value.status == 503


async def test_unmute_microphone_unmutes_the_track_the_emulator_shows() -> None:
    participant = emulator_participant("a")
    participant["tracks"] = [{"sid": "TR_mic", "source": "microphone", "muted": True}]
    emulator = FakeEmulator([emulator_room("r", participant)])
    clients = await simulated_clients(FakeLink(None), emulator, {}, Traffic())
    outcome = await clients.act("unmute_microphone", ClientRequest(room="r", participant="a"))
    assert (outcome.ok, outcome.outcome) == (True, "unmuted")
    assert emulator.calls == [("unmute", "TR_mic")]
    outcome = await clients.act("unmute_microphone", ClientRequest(room="r", participant="b"))
    assert (outcome.ok, outcome.outcome) == (False, "not connected")
    emulator.snapshot = [{"name": "r"}]
    with pytest.raises(Refused, match="unexpected shape") as refused:
        await clients.act("unmute_microphone", ClientRequest(room="r", participant="a"))
    assert refused.value.status == 502


# -- the rooms view -------------------------------------------------------------------------------------


async def test_rooms_are_read_from_both_sides_and_dropped_once_neither_knows_them() -> None:
    states = {"kept": RoomState(version=1, participants={"a": RosterEntry(role="user", kind="user")})}

    async def load_room(name: str) -> RoomState:
        return states.get(name, RoomState())

    traffic = Traffic()
    emulator = FakeEmulator([emulator_room("livekit-only", emulator_participant("z"))])
    watch = RoomWatch(load_room=load_room, emulator=emulator, traffic=traffic, stream=LiveStream())
    for room in ("kept", "closed"):
        watch.notice(room)
    watch.note_outcome("kept", "a", "connected")
    view = await watch.read()
    assert view.livekit_error is None
    assert [room.name for room in view.rooms] == ["kept", "livekit-only"]
    [row] = view.rooms[0].participants
    assert row.outcome is not None
    assert row.outcome.endswith(" connected")

    # The emulator answers something else: no room is dropped for want of it, and the page says why.
    emulator.snapshot = [{"rooms": "not a list of rooms"}]
    view = await watch.read()
    assert view.livekit_error is not None
    assert view.livekit_error.startswith("the emulated LiveKit answered an unexpected shape")
    assert [room.name for room in view.rooms] == ["kept", "livekit-only"]


# -- a sent command's trace -----------------------------------------------------------------------------


def kept_span(span_id: str, parent_id: str | None, start: int, end: int, name: str = "") -> KeptSpan:
    return KeptSpan("t" * 32, span_id, parent_id, name or span_id, "internal", start, end, None)


def test_the_waterfall_puts_each_span_under_its_parent_in_start_order() -> None:
    ms = 1_000_000
    spans = [
        kept_span("call-2", "command", 5 * ms, 6 * ms),
        kept_span("command", "console", 2 * ms, 9 * ms),
        kept_span("console", None, 1 * ms, 3 * ms),
        kept_span("call-1", "command", 3 * ms, 4 * ms),
        kept_span("orphan", "not-kept", 8 * ms, 10 * ms),
    ]
    rows = waterfall(spans)
    assert [(row.name, row.depth) for row in rows] == [
        ("console", 0),
        ("command", 1),
        ("call-1", 2),
        ("call-2", 2),
        ("orphan", 0),
    ]
    assert [(row.start_ms, row.duration_ms) for row in rows[:2]] == [(0.0, 2.0), (1.0, 7.0)]


async def test_a_sent_command_carries_the_consoles_trace_and_shows_its_spans() -> None:
    """The console's producer span starts the trace (its context goes out with the command); spans of
    that trace that end later are sent to the pages with the command, as a waterfall."""
    kept = KeptTraces()
    provider = TracerProvider()
    provider.add_span_processor(kept)
    traces = ControllerTraces(provider.get_tracer("test"), kept, command_exchange="commands")
    link, traffic, stream = FakeLink(None), Traffic(), LiveStream()
    sent: list[bytes] = []
    stream.broadcast = lambda kind, value: sent.append(to_json(value)) if kind == "command" else None  # type: ignore[method-assign]
    controller = Controller(link, traffic=traffic, stream=stream, on_room=lambda _room: None, traces=traces)
    envelope = b'{"room": "r", "participant": "p", "role": "user", "payload": {"action": "join"}}'
    command = await controller.publish("r", envelope)

    # The client published under the console's span: its context went out with the command.
    [(_, _, console_span)] = link.published
    assert console_span.is_valid and console_span.trace_flags.sampled
    assert command.trace_id == trace.format_trace_id(console_span.trace_id)
    # The service's span (a child of the console's), as it would end in dev.
    parent = trace.set_span_in_context(trace.NonRecordingSpan(console_span))
    provider.get_tracer("service").start_span("process commands", parent, trace.SpanKind.CONSUMER).end()
    await asyncio.sleep(TRACE_UPDATE_SECONDS * 3)
    assert [(row.name, row.depth) for row in command.trace] == [
        ("publish commands", 0),
        ("process commands", 1),
    ]
    assert b'"process commands"' in sent[-1]
