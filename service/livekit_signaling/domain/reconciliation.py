"""What LiveKit should hold for each identity of a room, and the repairs that bring it there.

Pure decisions, no I/O: the handler's permission updates (after a moderator's decision, or a LiveKit
webhook) and the reconciler (``livekit_signaling.reconcile``) plan with the same rules, so the fast path
and the guarantee cannot disagree about what a participant may publish.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from livekit_signaling.domain.permissions import (
    CAMERA,
    MICROPHONE,
    SCREEN_SOURCES,
    PublishPolicy,
    publish_sources,
)
from livekit_signaling.domain.ports import ConnectedParticipant
from livekit_signaling.domain.state import POPOUT_SEPARATOR, RoomDecisions, RoomState

#: What can differ between LiveKit and the room's state; a repair names every kind it mends.
Drift = Literal["microphone", "screen_share", "camera", "unknown_identity"]
DRIFT_KINDS: tuple[Drift, ...] = ("microphone", "screen_share", "camera", "unknown_identity")

#: LiveKit's own participants (egress, ingress, its SIP gateway, agents) join without a token of ours;
#: only a ``standard`` participant can be a client holding one.
STANDARD = "standard"


def has_standing_decisions(decisions: RoomDecisions) -> bool:
    """Whether the room's moderators decided anything a token minted earlier may contradict: microphone
    restrictions are on, or somebody's screen sharing was granted or revoked."""
    return decisions.microphone_restrictions is not None or bool(decisions.screen_share)


def issued_to(identity: str) -> str:
    """The participant a LiveKit identity was issued to: itself, or the participant whose popout it is
    (a participant id cannot contain the separator, see ``popout_identity``)."""
    participant, separator, _ = identity.partition(POPOUT_SEPARATOR)
    return participant if separator else identity


def popout_number(identity: str) -> int | None:
    """n for ``<participant>.popout<n>``, None for any other identity."""
    _, separator, number = identity.partition(POPOUT_SEPARATOR)
    return int(number) if separator and number.isdigit() else None


@dataclass(frozen=True, slots=True)
class Repair:
    """One identity brought in line with the room's state."""

    participant: ConnectedParticipant
    #: Exactly the sources it may publish from now on; None: disconnect it (the room does not know it).
    sources: frozenset[str] | None
    #: Every kind of difference this repair mends.
    drift: tuple[Drift, ...]

    @property
    def disconnects(self) -> bool:
        return self.sources is None


def drift_between(held: frozenset[str], required: frozenset[str]) -> tuple[Drift, ...]:
    """The kinds of sources in which what LiveKit holds differs from what the state requires."""
    different = held ^ required
    kinds: list[Drift] = []
    if MICROPHONE in different:
        kinds.append("microphone")
    if different & SCREEN_SOURCES:
        kinds.append("screen_share")
    if CAMERA in different:
        kinds.append("camera")
    return tuple(kinds)


def required_sources(
    room: RoomState, participant: ConnectedParticipant, policy: PublishPolicy
) -> frozenset[str] | None:
    """What this identity may publish according to the room's state; None when the room does not know
    it (neither a participant of the roster nor one of its popouts).

    ``room.participants`` must hold the entry of ``issued_to(identity)`` if the roster has one.
    """
    identity = participant.identity
    owner = issued_to(identity)
    entry = room.participants.get(owner)
    if entry is None:
        return None
    if owner == identity:
        return publish_sources(identity, entry, room.decisions, policy)
    number = popout_number(identity)
    if number is not None and 1 <= number <= entry.popouts:
        return frozenset()  # a popout only watches
    return None


def plan_repairs(
    room: RoomState,
    connected: Iterable[ConnectedParticipant],
    policy: PublishPolicy,
    *,
    disconnect_unknown: bool,
) -> list[Repair]:
    """The repairs that make LiveKit hold what the room's state says; identities already in line cost
    nothing.

    An identity the room does not know is disconnected with ``disconnect_unknown`` when it is a
    ``standard`` participant: a client that still holds a token of ours after ``leave`` (LiveKit's
    RemoveParticipant disconnects but does not revoke the token, and LiveKit keeps refreshing the tokens
    of connected clients), or the popout of a participant who left. Otherwise (LiveKit's own workers,
    or callers that must not disconnect) its microphone goes while restrictions forbid it, and nothing
    is ever granted to it. ``room.participants`` must hold the entries of every connected identity's
    ``issued_to`` that the roster has.
    """
    unrestricted = room.decisions.microphone_restrictions
    repairs = []
    for participant in connected:
        required = required_sources(room, participant, policy)
        if required is None:
            if disconnect_unknown and participant.kind == STANDARD:
                repairs.append(Repair(participant, None, ("unknown_identity",)))
                continue
            restricted = unrestricted is not None and participant.identity not in unrestricted
            held = participant.publish_sources
            required = held - {MICROPHONE} if restricted else held
        drift = drift_between(participant.publish_sources, required)
        if drift:
            repairs.append(Repair(participant, required, drift))
    return repairs
