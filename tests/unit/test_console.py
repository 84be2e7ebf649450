"""The console's pure parts: what it keeps of the traffic, and how a room is shown."""

from __future__ import annotations

import json
import time

from livekit_signaling.console import traffic as traffic_module
from livekit_signaling.console.rooms import is_gone, room_view
from livekit_signaling.console.traffic import Traffic, token_claims
from livekit_signaling.domain.permissions import TokenGrant
from livekit_signaling.domain.state import RoomDecisions, RoomState, RosterEntry
from livekit_signaling.livekit.tokens import TokenMinter


def token(room: str, identity: str, ttl: int = 60) -> str:
    grant = TokenGrant(
        room=room,
        identity=identity,
        publish_sources=frozenset({"camera"}),
        can_publish_data=True,
        hidden=False,
    )
    return TokenMinter("devkey", "secret-" + "x" * 32, ttl_seconds=ttl).issue(grant)


def event_body(room: str, participant: str, payload: dict[str, object]) -> bytes:
    return json.dumps({"room": room, "participant": participant, "payload": payload}).encode()


def test_events_are_addressed_by_routing_key_and_answer_their_command() -> None:
    traffic = Traffic()
    command = traffic.record_command("m1", "room.r", {"room": "r"})
    body = event_body("r", "alice", {"message": "force_muted", "moderator": "mod"})
    event, answered = traffic.record_event("room.r.participant.alice", "m1", body)
    assert (event.room, event.recipient, event.message) == ("r", "alice", "force_muted")
    assert answered is command
    assert command.answers == [event]
    _, unrelated = traffic.record_event("room.r.participant.bob", "other", body)
    assert unrelated is None
    assert [e.seq for e in traffic.events] == [1, 2]


def test_a_body_that_is_not_json_is_kept_as_text() -> None:
    event, _ = Traffic().record_event("room.r.participant.a", None, b"\xffnot json")
    assert event.message == "?"
    assert isinstance(event.body, str)
    assert event.body.endswith("not json")


def test_history_is_bounded() -> None:
    traffic = Traffic()
    for n in range(traffic_module.COMMAND_HISTORY + 5):
        traffic.record_command(f"m{n}", "room.r", {})
    assert len(traffic.commands) == traffic_module.COMMAND_HISTORY
    assert "m0" not in traffic.commands
    command = next(iter(traffic.commands.values()))
    body = event_body(
        "r", "p", {"message": "microphone_restrictions_enabled", "unrestricted_participants": []}
    )
    for _ in range(traffic_module.EVENT_HISTORY + 5):
        traffic.record_event("room.r.participant.p", command.message_id, body)
    assert len(command.answers) == traffic_module.ANSWERS_PER_COMMAND
    assert command.answer_count == traffic_module.EVENT_HISTORY + 5
    assert len(traffic.events) == traffic_module.EVENT_HISTORY
    assert traffic.events[0].seq == 6


def test_tokens_are_kept_per_identity_of_the_token_while_valid() -> None:
    traffic = Traffic()
    join_token, popout_token = token("r", "alice"), token("r", "alice.popout1")
    credentials = {"room": "r", "token": join_token, "public_url": "http://x"}
    traffic.record_event(
        "room.r.participant.alice", None,
        event_body("r", "alice", {"message": "join_success", "credentials": credentials}),
    )  # fmt: skip
    traffic.record_event(
        "room.r.participant.alice", None,
        event_body("r", "alice", {"message": "popout_stream_access_token", "token": popout_token}),
    )  # fmt: skip
    assert traffic.token_for("r", "alice") == join_token
    # The popout's token belongs to the popout identity it names, not to the event's recipient.
    assert traffic.token_for("r", "alice.popout1") == popout_token
    assert traffic.token_for("other", "alice") is None

    # A token about to expire is not handed to a client (it would be refused mid-connect).
    short = token("r", "bob", ttl=int(traffic_module.TOKEN_MARGIN_SECONDS) - 2)
    traffic.record_event(
        "room.r.participant.bob", None, event_body("r", "bob", {"message": "credentials", "token": short})
    )
    assert not traffic.has_token("r", "bob")
    assert token_claims(short)["exp"] > time.time()

    traffic.forget_room("r")
    assert traffic.token_for("r", "alice") is None
    assert token_claims("not a token") == {}


def livekit_participant(identity: str, *sources: str) -> dict[str, object]:
    return {
        "identity": identity,
        "state": "ACTIVE",
        "tracks": [{"sid": f"TR_{s}", "source": s, "muted": False} for s in sources],
        "permission": {"can_publish": True, "can_publish_sources": [], "hidden": False},
    }


def test_room_view_puts_roster_popouts_and_unknown_identities_side_by_side() -> None:
    state = RoomState(
        version=3,
        participants={
            "mod": RosterEntry(role="moderator", kind="user"),
            "alice": RosterEntry(role="user", kind="user", popouts=2),
        },
        decisions=RoomDecisions(microphone_restrictions=["mod"]),
    )
    livekit = {
        "name": "r",
        "sid": "RM_1",
        "participants": [
            livekit_participant("stranger", "microphone"),
            livekit_participant("alice.popout2"),
            livekit_participant("alice", "camera"),
        ],
    }
    view = room_view(
        "r",
        state,
        livekit,
        has_token=lambda identity: identity == "mod",
        outcomes={"alice": "published camera"},
    )
    rows = view["participants"]
    assert [row["identity"] for row in rows] == ["mod", "alice", "alice.popout1", "alice.popout2", "stranger"]
    mod, alice, popout1, popout2, stranger = rows
    assert mod["roster"] == {"role": "moderator", "kind": "user", "popouts": 0}
    assert (mod["livekit"], mod["has_token"]) == (None, True)
    assert alice["livekit"]["tracks"][0]["source"] == "camera"
    assert alice["outcome"] == "published camera"
    assert (popout1["popout_of"], popout1["livekit"]) == ("alice", None)
    assert popout2["livekit"]["identity"] == "alice.popout2"
    assert (stranger["roster"], stranger["popout_of"]) == (None, None)
    assert view["state"] == {"version": 3, "microphone_restrictions": ["mod"], "screen_share": {}}
    assert view["livekit"] == {"sid": "RM_1"}


def test_a_room_is_gone_when_neither_side_knows_it() -> None:
    assert is_gone(RoomState(), None)
    assert not is_gone(RoomState(), {"name": "r", "participants": []})
    assert not is_gone(RoomState(version=1, participants={"a": RosterEntry(role="user", kind="user")}), None)
    # Enabled restrictions with nobody in the room are still state worth showing.
    assert not is_gone(RoomState(version=2, decisions=RoomDecisions(microphone_restrictions=[])), None)
    view = room_view("r", None, None, state_error="state store unavailable")
    assert (view["state"], view["state_error"], view["participants"]) == (None, "state store unavailable", [])
