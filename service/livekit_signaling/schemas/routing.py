"""Routing keys of the contract, spelled in this one place.

Commands travel on the command exchange under ``room.<room>``; events on the event exchange under
``room.<room>.participant.<participant>``. Room and participant ids cannot contain ``.`` (see
``ID_PATTERN``), so a key splits back into its parts unambiguously and the topic wildcards below match
exactly one room or participant per ``*``.
"""

from __future__ import annotations

#: Binding of the command exchange that takes every room's commands (one word after ``room.``).
EVERY_ROOM_COMMAND = "room.*"
#: Binding of the event exchange that sees every event of every room.
EVERY_EVENT = "room.#"


def command_routing_key(room: str) -> str:
    """The key a controller publishes ``room``'s commands under."""
    return f"room.{room}"


def participant_routing_key(room: str, participant: str) -> str:
    """The key of the events addressed to ``participant`` in ``room``."""
    return f"room.{room}.participant.{participant}"


def room_events_binding(room: str) -> str:
    """A binding of the event exchange that sees every event of ``room``."""
    return f"room.{room}.#"


def seen_by_every_event(routing_key: str) -> bool:
    """Whether the ``EVERY_EVENT`` binding matches ``routing_key`` (any key of any room)."""
    return routing_key == "room" or routing_key.startswith("room.")


def addressee(routing_key: str) -> tuple[str, str] | None:
    """Room and participant of an event's routing key; None for any other key."""
    parts = routing_key.split(".")
    if len(parts) == 4 and parts[0] == "room" and parts[2] == "participant":
        return parts[1], parts[3]
    return None


#: The address templates as AsyncAPI writes channel addresses.
COMMAND_ADDRESS = command_routing_key("{room}")
EVENT_ADDRESS = participant_routing_key("{room}", "{participant}")
