"""One room compared with LiveKit and repaired: what LiveKit holds (ListParticipants), what the room's
state requires (read in pages), and the repairs between them, carried out through the LiveKit port."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Literal

from livekit_signaling.domain.permissions import PublishPolicy
from livekit_signaling.domain.ports import LiveKit, StateStore
from livekit_signaling.domain.reconciliation import Repair, issued_to, plan_repairs

#: Roster entries read at once. LiveKit lists a room in one answer (ListParticipants has no paging), so
#: the room's own state is what is read in pages: a room of 10,000 holds one page of entries at a time
#: beside LiveKit's compact list.
ROSTER_PAGE = 1_000

Outcome = Literal["in_line", "repaired", "gone"]


@dataclass(frozen=True, slots=True)
class RoomCheck:
    """What one check found and did."""

    #: ``in_line``: nothing to repair; ``repaired``: repairs were made; ``gone``: the room has no state
    #: any more (closed or expired meanwhile), so nothing was enforced.
    outcome: Outcome
    #: Identities LiveKit listed.
    connected: int
    repairs: list[Repair] = field(default_factory=list)


class RoomChecker:
    def __init__(
        self,
        *,
        livekit: LiveKit,
        store: StateStore,
        policy: PublishPolicy,
        disconnect_unknown: bool,
        roster_page: int = ROSTER_PAGE,
    ) -> None:
        self._livekit = livekit
        self._store = store
        self._policy = policy
        self._disconnect_unknown = disconnect_unknown
        self._roster_page = roster_page

    async def check(self, room: str) -> RoomCheck:
        """Compare and repair. Raises ``LiveKitUnavailable``, ``LiveKitRejected`` or
        ``StoreUnavailable``; repairs made before such a failure stay made."""
        connected = await self._livekit.list_participants(room)
        repairs: list[Repair] = []
        for start in range(0, len(connected), self._roster_page):
            page = connected[start : start + self._roster_page]
            state = await self._store.load(room, {issued_to(participant.identity) for participant in page})
            if state.version == 0:
                return RoomCheck("gone", len(connected), repairs)
            planned = plan_repairs(state, page, self._policy, disconnect_unknown=self._disconnect_unknown)
            await self._carry_out(room, planned)
            repairs.extend(planned)
        return RoomCheck("repaired" if repairs else "in_line", len(connected), repairs)

    async def _carry_out(self, room: str, repairs: list[Repair]) -> None:
        changes = [(repair.participant, repair.sources) for repair in repairs if repair.sources is not None]
        strays = [repair.participant.identity for repair in repairs if repair.sources is None]
        if changes:
            await self._livekit.set_publish_sources(room, changes)
        if strays:
            await asyncio.gather(*(self._livekit.remove_participant(room, identity) for identity in strays))
