"""The interfaces the domain needs from the outside world; adapters implement them."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Protocol

import msgspec

from livekit_signaling.domain.permissions import TokenGrant
from livekit_signaling.domain.state import RoomState


class ConnectedParticipant(msgspec.Struct, frozen=True, gc=False):
    """A participant as LiveKit sees it right now. A Struct: a room of 10,000 makes 10,000 of these per
    listing, and a frozen dataclass costs fifty times as much to build."""

    identity: str
    #: Sources its current permission lets it publish (LiveKit's "empty list means all" resolved).
    publish_sources: frozenset[str]
    #: Sids of its microphone tracks that are not muted.
    unmuted_microphone_tracks: tuple[str, ...]
    #: The adapter's own copy of the permission, so that an update can keep every field it does not
    #: mean to change (UpdateParticipant replaces the whole permission).
    permission: object
    #: LiveKit's participant kind, lower case: ``standard`` for a client with an access token; ``egress``,
    #: ``ingress``, ``sip``, ``agent`` for LiveKit's own workers.
    kind: str = "standard"


class LiveKit(Protocol):
    """The LiveKit server, as the domain uses it. Every method may raise ``LiveKitUnavailable`` or
    ``LiveKitRejected``; "not found" is success where the method says so."""

    async def ensure_room(self, room: str) -> None: ...

    async def list_participants(self, room: str) -> list[ConnectedParticipant]: ...

    async def set_publish_sources(
        self, room: str, changes: Sequence[tuple[ConnectedParticipant, frozenset[str]]]
    ) -> None:
        """Give each participant exactly these sources to publish (all of them concurrently, as far as
        the adapter's bound on calls in flight allows); one that left meanwhile is fine."""

    async def mute_track(self, room: str, identity: str, track_sid: str) -> None: ...

    async def remove_participant(self, room: str, identity: str) -> None:
        """Disconnect; an identity that is not connected is fine."""

    async def delete_room(self, room: str) -> None:
        """Close the room; a room that does not exist is fine."""


class TokenIssuer(Protocol):
    def issue(self, grant: TokenGrant) -> str: ...


class StateStore(Protocol):
    """Room state and duplicate suppression, in process memory or shared (Redis).

    A room is kept in parts (its decisions, and one roster entry per participant) so that a
    participant's own command costs the same in a room of 10,000 as in a room of 10. Every write is
    fenced by the room's one version: it succeeds only if the stored version is still the loaded one,
    and bumps it, whichever part it writes. A per-entry version would not do: what a join answers
    depends on the decisions, and what a room-wide command acts on depends on the whole roster, so a
    write must fail when *any* part changed since its load. Within a replica a room's commands run one
    at a time, so the single version costs nothing there; it only makes one of two replicas that both
    handle the room during a hand-over retry instead of interleaving.
    """

    async def load(self, room: str, participants: Collection[str] | None = None) -> RoomState:
        """The room's state (version 0 if it has none): its decisions and its whole roster, or with
        ``participants`` only those of their entries that exist (a cost that does not grow with the
        room)."""

    async def save_entry(
        self, room: str, state: RoomState, participant: str, *, partition: int | None = None
    ) -> None:
        """Store ``participant``'s entry as it is in ``state.participants`` (absent: removed), if the
        stored version is still ``state.version``; bump the version. The rest of the room is untouched.

        ``partition``: the partition queue the writing command arrived on. While the room has standing
        decisions (``has_standing_decisions``), every write that names it keeps the room on that
        partition's reconcile list, for as long as the room's state lives.

        Raises ``StaleState`` when another writer got there first.
        """

    async def save_decisions(self, room: str, state: RoomState, *, partition: int | None = None) -> None:
        """Store ``state.decisions``, fenced and versioned like ``save_entry``; the roster is untouched.
        Decisions that no longer stand keep the room on the reconcile list for the store's lift grace
        (a token minted before the lift can still connect until it expires)."""

    async def delete(self, room: str, *, partition: int | None = None) -> None:
        """Forget the room, and take it off ``partition``'s reconcile list."""

    async def rooms_to_reconcile(self, partitions: Collection[int]) -> list[tuple[str, int]]:
        """The rooms of these partitions that have something to enforce, with their partition."""

    async def is_processed(self, message_id: str) -> bool: ...

    async def load_unless_processed(
        self, message_id: str, room: str, participants: Collection[str]
    ) -> RoomState | None:
        """None when the command was processed (``is_processed``), else ``load(room, participants)``:
        a command's duplicate check and the read of its sender's entry, in one round trip."""

    async def mark_processed(self, message_id: str) -> None:
        """Remember a command as answered for the duplicate-suppression window."""

    async def count_restricted_rooms(self) -> int: ...

    async def close(self) -> None: ...
