"""Room state: the roster and the moderators' decisions, kept by a ``StateStore``."""

from __future__ import annotations

import msgspec

from service.schemas.commands import Kind, Role


class RosterEntry(msgspec.Struct, array_like=True, gc=False, omit_defaults=True):
    """One participant of a room. Stored as a compact array: a large room holds thousands of these."""

    role: Role
    kind: Kind
    #: How many popout identities were issued; they are ``popout_identity(participant, n)`` for
    #: n in 1..popouts, so the names need not be stored.
    popouts: int = 0


class RoomState(msgspec.Struct, omit_defaults=True):
    """Everything the service remembers about a room.

    ``version`` fences writes: a store refuses to save a state whose version is not the one it loaded,
    so two replicas that briefly both handle a room during a partition handover cannot interleave.
    """

    version: int = 0
    participants: dict[str, RosterEntry] = msgspec.field(default_factory=dict)
    #: ``None`` while restrictions are disabled; the unrestricted participants while enabled (an empty
    #: list is "enabled, nobody unrestricted", not "disabled").
    microphone_restrictions: list[str] | None = None
    #: Moderators' explicit screen-share decisions by participant; a participant without one follows
    #: the ``SCREEN_SHARE_REQUIRES_PERMISSION`` default.
    screen_share: dict[str, bool] = msgspec.field(default_factory=dict)

    @property
    def is_empty(self) -> bool:
        return not self.participants and self.microphone_restrictions is None and not self.screen_share


def popout_identity(participant: str, number: int) -> str:
    """LiveKit identity of a participant's n-th popout stream.

    A second connection with the participant's own identity would disconnect the first, so a popout
    needs its own. ``.`` cannot occur in a participant id (it would break routing keys), so a derived
    identity can never collide with a real participant's.
    """
    return f"{participant}.popout{number}"


def issued_identities(participant: str, entry: RosterEntry) -> list[str]:
    """Every LiveKit identity issued to a participant: its own and its popouts'."""
    return [participant, *(popout_identity(participant, n) for n in range(1, entry.popouts + 1))]
