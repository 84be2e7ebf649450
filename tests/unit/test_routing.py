"""The contract's routing keys (schemas/routing.py) split back into what they were built from, and the
topic bindings match what RabbitMQ's topic exchange would route to them."""

from __future__ import annotations

import pytest

from livekit_signaling.schemas.routing import (
    addressee,
    command_routing_key,
    participant_routing_key,
    seen_by_every_event,
)


def test_an_event_key_names_its_room_and_participant() -> None:
    assert addressee(participant_routing_key("r-1", "alice")) == ("r-1", "alice")


@pytest.mark.parametrize("key", ["room.r-1", "room.r-1.participants.alice", "lobby.r-1.participant.a", ""])
def test_other_keys_name_no_addressee(key: str) -> None:
    assert addressee(key) is None


@pytest.mark.parametrize(
    ("key", "seen"),
    [
        (participant_routing_key("r-1", "alice"), True),
        (command_routing_key("r-1"), True),
        ("room", True),  # "#" matches zero words
        ("rooms.r-1", False),
        ("lobby.r-1.participant.alice", False),
    ],
)
def test_the_every_event_binding_matches_as_a_topic_exchange_does(key: str, seen: bool) -> None:
    assert seen_by_every_event(key) is seen
