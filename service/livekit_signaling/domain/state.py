"""Room state: the roster and the moderators' decisions, kept by a ``StateStore``.

A room is stored as parts, so that what a command costs does not grow with the room: one
roster entry per participant, and the room's decisions (restrictions, screen-share decisions) as one
small value beside them. A participant's own command (join, leave, token refresh, popout) reads and
writes only its entry and the decisions; only room-wide commands read the whole roster.
"""

from __future__ import annotations

import msgspec

from livekit_signaling.schemas.commands import Kind, Role


class RosterEntry(msgspec.Struct, array_like=True, gc=False, omit_defaults=True, frozen=True):
    """One participant of a room. Stored as a compact array: a large room holds thousands of these.
    Frozen, so that a store can hand out and share one instance per distinct value."""

    role: Role
    kind: Kind
    #: How many popout identities were issued; they are ``popout_identity(participant, n)`` for
    #: n in 1..popouts, so the names need not be stored.
    popouts: int = 0


class RoomDecisions(msgspec.Struct, omit_defaults=True):
    """What the room's moderators decided; every participant's permissions depend on it."""

    #: ``None`` while restrictions are disabled; the unrestricted participants while enabled (an empty
    #: list is "enabled, nobody unrestricted", not "disabled").
    microphone_restrictions: list[str] | None = None
    #: Moderators' explicit screen-share decisions by participant; a participant without one follows
    #: the ``SCREEN_SHARE_REQUIRES_PERMISSION`` default.
    screen_share: dict[str, bool] = msgspec.field(default_factory=dict)


class RoomState(msgspec.Struct):
    """A room as a command sees it: the decisions and the roster, or the part of the roster the command
    asked for (``StateStore.load`` with ``participants``).

    ``version`` fences writes: every write of any part of the room checks that the stored version is
    still the one loaded and bumps it, so two replicas that briefly both handle a room during a
    partition handover cannot interleave (see ``StateStore``).
    """

    version: int = 0
    decisions: RoomDecisions = msgspec.field(default_factory=RoomDecisions)
    participants: dict[str, RosterEntry] = msgspec.field(default_factory=dict)


#: Between a participant's id and its popout's number in the popout's LiveKit identity.
POPOUT_SEPARATOR = ".popout"


def popout_identity(participant: str, number: int) -> str:
    """LiveKit identity of a participant's n-th popout stream.

    A second connection with the participant's own identity would disconnect the first, so a popout
    needs its own. ``.`` cannot occur in a participant id (it would break routing keys), so a derived
    identity can never collide with a real participant's.
    """
    return f"{participant}{POPOUT_SEPARATOR}{number}"


def issued_identities(participant: str, entry: RosterEntry) -> list[str]:
    """Every LiveKit identity issued to a participant: its own and its popouts'."""
    return [participant, *(popout_identity(participant, n) for n in range(1, entry.popouts + 1))]
