"""Who may publish what: the one policy behind tokens, permission updates and webhook re-checks."""

from __future__ import annotations

from dataclasses import dataclass

from livekit_signaling.domain.state import RoomDecisions, RosterEntry

CAMERA = "camera"
MICROPHONE = "microphone"
SCREEN_SHARE = "screen_share"
SCREEN_SHARE_AUDIO = "screen_share_audio"
ALL_SOURCES = frozenset({CAMERA, MICROPHONE, SCREEN_SHARE, SCREEN_SHARE_AUDIO})
SCREEN_SOURCES = frozenset({SCREEN_SHARE, SCREEN_SHARE_AUDIO})


@dataclass(frozen=True, slots=True)
class PublishPolicy:
    """Room-independent settings of the policy."""

    screen_share_requires_permission: bool = False


def microphone_allowed(participant: str, entry: RosterEntry, decisions: RoomDecisions) -> bool:
    if decisions.microphone_restrictions is None or entry.role == "moderator":
        return True
    return participant in decisions.microphone_restrictions


def screen_share_allowed(
    participant: str, entry: RosterEntry, decisions: RoomDecisions, policy: PublishPolicy
) -> bool:
    if entry.role == "moderator":
        return True
    decision = decisions.screen_share.get(participant)
    if decision is not None:
        return decision
    return not policy.screen_share_requires_permission


def publish_sources(
    participant: str, entry: RosterEntry, decisions: RoomDecisions, policy: PublishPolicy
) -> frozenset[str]:
    """Exactly the track sources this participant may publish now; empty means nothing at all.

    Recorders only watch; SIP participants only talk.
    """
    if entry.kind == "recorder":
        return frozenset()
    sources = frozenset({MICROPHONE}) if entry.kind == "sip" else ALL_SOURCES
    if not microphone_allowed(participant, entry, decisions):
        sources -= {MICROPHONE}
    if not screen_share_allowed(participant, entry, decisions, policy):
        sources -= SCREEN_SOURCES
    return sources


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """What a minted access token allows; the LiveKit adapter turns it into a JWT."""

    room: str
    identity: str
    publish_sources: frozenset[str]
    can_publish_data: bool
    hidden: bool


def participant_grant(
    room_name: str, participant: str, entry: RosterEntry, decisions: RoomDecisions, policy: PublishPolicy
) -> TokenGrant:
    return TokenGrant(
        room=room_name,
        identity=participant,
        publish_sources=publish_sources(participant, entry, decisions, policy),
        can_publish_data=entry.kind != "recorder",
        hidden=entry.kind == "recorder",
    )


def popout_grant(room_name: str, identity: str) -> TokenGrant:
    """A popout stream only watches: hidden, no tracks, no data."""
    return TokenGrant(
        room=room_name, identity=identity, publish_sources=frozenset(), can_publish_data=False, hidden=True
    )
