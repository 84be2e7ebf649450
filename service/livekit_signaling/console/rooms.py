"""One room as the page shows it: the service's roster and decisions next to what LiveKit holds for each
identity. A pure function of the two, so that it can be tested without either."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from livekit_signaling.domain.state import RoomState, popout_identity


def room_view(
    name: str,
    state: RoomState | None,
    livekit: Mapping[str, Any] | None,
    *,
    state_error: str | None = None,
    has_token: Callable[[str], bool] = lambda _identity: False,
    outcomes: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Rows in roster order, each participant followed by its popout identities; then identities LiveKit
    holds that the roster does not know (admitted by something else, or state lost)."""
    connected: dict[str, Any] = {p["identity"]: p for p in (livekit or {}).get("participants", [])}
    outcomes = outcomes or {}

    def row(identity: str, roster: dict[str, Any] | None, popout_of: str | None) -> dict[str, Any]:
        return {
            "identity": identity,
            "roster": roster,
            "popout_of": popout_of,
            "livekit": connected.pop(identity, None),
            "has_token": has_token(identity),
            "outcome": outcomes.get(identity),
        }

    rows = []
    for participant, entry in (state.participants if state is not None else {}).items():
        rows.append(
            row(participant, {"role": entry.role, "kind": entry.kind, "popouts": entry.popouts}, None)
        )
        rows.extend(
            row(popout_identity(participant, n), None, participant) for n in range(1, entry.popouts + 1)
        )
    rows.extend(row(identity, None, None) for identity in list(connected))
    return {
        "name": name,
        "state": None
        if state is None
        else {
            "version": state.version,
            "microphone_restrictions": state.decisions.microphone_restrictions,
            "screen_share": state.decisions.screen_share,
        },
        "state_error": state_error,
        "livekit": None if livekit is None else {"sid": livekit.get("sid", "")},
        "participants": rows,
    }


def is_gone(state: RoomState | None, livekit: Mapping[str, Any] | None) -> bool:
    """Neither the service nor LiveKit knows the room (never joined, or closed)."""
    return livekit is None and (state is None or state.version == 0)
