"""One room as the page shows it: the service's roster and decisions next to what LiveKit holds for each
identity, the drift between the two (as the reconciler would see it) and the reconciler's latest
repairs. A pure function of its inputs, so that it can be tested without either side."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence

from livekit_signaling.console.views import (
    LiveKitParticipant,
    LiveKitRoom,
    LiveKitRoomView,
    ParticipantRow,
    RepairView,
    RoomView,
    RosterView,
    StateView,
)
from livekit_signaling.domain.permissions import ALL_SOURCES, PublishPolicy
from livekit_signaling.domain.ports import ConnectedParticipant
from livekit_signaling.domain.reconciliation import Repair, plan_repairs
from livekit_signaling.domain.state import RoomState, popout_identity
from livekit_signaling.reconcile.recent import RecordedRepair

#: How the console reads a room's state (the service's store, injected).
LoadRoom = Callable[[str], Awaitable[RoomState]]
#: The reconciler's latest repairs of a room, oldest first (the service's, injected).
RecentRepairsOf = Callable[[str], Sequence[RecordedRepair]]


def connected(participant: LiveKitParticipant) -> ConnectedParticipant:
    """What the emulator shows, as the LiveKit adapter would list it."""
    permission = participant.permission
    sources = (
        frozenset()
        if not permission.can_publish
        else frozenset(permission.can_publish_sources) or ALL_SOURCES
    )
    return ConnectedParticipant(
        identity=participant.identity,
        publish_sources=sources,
        unmuted_microphone_tracks=(),
        permission=None,
        kind=participant.kind.lower(),
    )


def room_view(
    name: str,
    state: RoomState | None,
    livekit: LiveKitRoom | None,
    *,
    state_error: str | None = None,
    has_token: Callable[[str], bool] = lambda _identity: False,
    outcomes: Mapping[str, str] | None = None,
    policy: PublishPolicy | None = None,
    disconnect_unknown: bool = True,
    repairs: Sequence[RecordedRepair] = (),
) -> RoomView:
    """Rows in roster order, each participant followed by its popout identities; then identities LiveKit
    holds that the roster does not know (admitted by something else, or state lost)."""
    connected_now = {p.identity: p for p in livekit.participants} if livekit is not None else {}
    outcomes = outcomes or {}
    drift: dict[str, Repair] = {}
    if state is not None and state.version > 0:
        planned = plan_repairs(
            state,
            [connected(p) for p in connected_now.values()],
            policy or PublishPolicy(),
            disconnect_unknown=disconnect_unknown,
        )
        drift = {repair.participant.identity: repair for repair in planned}

    def row(identity: str, roster: RosterView | None, popout_of: str | None) -> ParticipantRow:
        repair = drift.get(identity)
        return ParticipantRow(
            identity=identity,
            roster=roster,
            popout_of=popout_of,
            livekit=connected_now.pop(identity, None),
            has_token=has_token(identity),
            outcome=outcomes.get(identity),
            drift=list(repair.drift) if repair is not None else [],
            repair_to=sorted(repair.sources) if repair is not None and repair.sources is not None else None,
        )

    rows = []
    for participant, entry in (state.participants if state is not None else {}).items():
        rows.append(row(participant, RosterView(entry.role, entry.kind, entry.popouts), None))
        rows.extend(
            row(popout_identity(participant, n), None, participant) for n in range(1, entry.popouts + 1)
        )
    rows.extend(row(identity, None, None) for identity in list(connected_now))
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
        repairs=[
            RepairView(
                at=repair.at,
                identity=repair.identity,
                drift=list(repair.drift),
                sources=None if repair.sources is None else list(repair.sources),
            )
            for repair in reversed(repairs)
        ],
    )


def is_gone(state: RoomState | None, livekit: LiveKitRoom | None) -> bool:
    """Neither the service nor LiveKit knows the room (never joined, or closed)."""
    return livekit is None and (state is None or state.version == 0)
