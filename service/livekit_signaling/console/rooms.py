"""One room as the page shows it: the service's roster and decisions next to what LiveKit holds for each
identity. A pure function of the two, so that it can be tested without either."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from livekit_signaling.console.views import (
    LiveKitRoom,
    LiveKitRoomView,
    ParticipantRow,
    RoomView,
    RosterView,
    StateView,
)
from livekit_signaling.domain.state import RoomState, popout_identity

#: How the console reads a room's state (the service's store, injected).
LoadRoom = Callable[[str], Awaitable[RoomState]]


def room_view(
    name: str,
    state: RoomState | None,
    livekit: LiveKitRoom | None,
    *,
    state_error: str | None = None,
    has_token: Callable[[str], bool] = lambda _identity: False,
    outcomes: Mapping[str, str] | None = None,
) -> RoomView:
    """Rows in roster order, each participant followed by its popout identities; then identities LiveKit
    holds that the roster does not know (admitted by something else, or state lost)."""
    connected = {p.identity: p for p in livekit.participants} if livekit is not None else {}
    outcomes = outcomes or {}

    def row(identity: str, roster: RosterView | None, popout_of: str | None) -> ParticipantRow:
        return ParticipantRow(
            identity=identity,
            roster=roster,
            popout_of=popout_of,
            livekit=connected.pop(identity, None),
            has_token=has_token(identity),
            outcome=outcomes.get(identity),
        )

    rows = []
    for participant, entry in (state.participants if state is not None else {}).items():
        rows.append(row(participant, RosterView(entry.role, entry.kind, entry.popouts), None))
        rows.extend(
            row(popout_identity(participant, n), None, participant) for n in range(1, entry.popouts + 1)
        )
    rows.extend(row(identity, None, None) for identity in list(connected))
    return RoomView(
        name=name,
        state=None
        if state is None
        else StateView(
            version=state.version,
            microphone_restrictions=state.decisions.microphone_restrictions,
            screen_share=state.decisions.screen_share,
        ),
        state_error=state_error,
        livekit=None if livekit is None else LiveKitRoomView(sid=livekit.sid),
        participants=rows,
    )


def is_gone(state: RoomState | None, livekit: LiveKitRoom | None) -> bool:
    """Neither the service nor LiveKit knows the room (never joined, or closed)."""
    return livekit is None and (state is None or state.version == 0)
