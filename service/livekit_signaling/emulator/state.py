"""In-memory model of what a LiveKit server knows: rooms, participants and their published tracks.

The model is synchronous and transport-free so the Twirp handlers, the control routes and the in-process
simulated clients all share one implementation of LiveKit's rules. The protobuf messages are kept as the
live state (no parallel dataclasses): answering a Twirp call is then a plain ``SerializeToString`` of the
stored message, which keeps the emulator cheap enough for benchmarks.

Mutating methods report what happened to an optional ``listener`` (the webhook sender) with the names
LiveKit uses for its webhook events.
"""

from __future__ import annotations

import logging
import random
import string
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from livekit.protocol.models import (
    DisconnectReason,
    ParticipantInfo,
    ParticipantPermission,
    Room,
    TrackInfo,
    TrackSource,
    TrackType,
)
from livekit.protocol.room import CreateRoomRequest, UpdateParticipantRequest

log = logging.getLogger(__name__)

# LiveKit's own defaults (config.RoomConfig) for rooms created without explicit settings.
DEFAULT_EMPTY_TIMEOUT = 300
DEFAULT_DEPARTURE_TIMEOUT = 20

# Token grants carry sources as lower-case strings (VideoGrant.CanPublishSources).
SOURCE_BY_NAME: dict[str, TrackSource] = {
    "camera": TrackSource.CAMERA,
    "microphone": TrackSource.MICROPHONE,
    "screen_share": TrackSource.SCREEN_SHARE,
    "screen_share_audio": TrackSource.SCREEN_SHARE_AUDIO,
}
NAME_BY_SOURCE: dict[int, str] = {int(v): k for k, v in SOURCE_BY_NAME.items()}

_TYPE_BY_SOURCE: dict[int, TrackType] = {
    TrackSource.CAMERA: TrackType.VIDEO,
    TrackSource.SCREEN_SHARE: TrackType.VIDEO,
    TrackSource.MICROPHONE: TrackType.AUDIO,
    TrackSource.SCREEN_SHARE_AUDIO: TrackType.AUDIO,
}

# The `kind` claim of an access token (AccessToken.ParticipantKind) mapped to ParticipantInfo.Kind.
_KIND_BY_NAME: dict[str, ParticipantInfo.Kind] = {
    "standard": ParticipantInfo.STANDARD,
    "ingress": ParticipantInfo.INGRESS,
    "egress": ParticipantInfo.EGRESS,
    "sip": ParticipantInfo.SIP,
    "agent": ParticipantInfo.AGENT,
}

# LiveKit's guid package: prefix + 12 random characters. Uniqueness is all that matters here, so the
# fast non-cryptographic generator is used (sids are minted on every join and publish).
_SID_ALPHABET = string.ascii_letters + string.digits


def new_sid(prefix: str) -> str:
    return prefix + "".join(random.choices(_SID_ALPHABET, k=12))


class EmulatorError(Exception):
    """A failure LiveKit reports as a Twirp error; `code` is the Twirp error code string."""

    def __init__(self, code: str, msg: str) -> None:
        super().__init__(f"{code}: {msg}")
        self.code = code
        self.msg = msg


# Messages are LiveKit's own (pkg/service/errors.go), so log lines and assertions read the same.
def participant_not_found() -> EmulatorError:
    return EmulatorError("not_found", "participant does not exist")


def room_not_found() -> EmulatorError:
    return EmulatorError("not_found", "requested room does not exist")


# Called with (event name, room, participant, track); the objects are live state, so a listener that
# keeps them past the call must copy them.
EventListener = Callable[[str, Room, ParticipantInfo | None, TrackInfo | None], None]


def source_allowed(permission: ParticipantPermission, source: int) -> bool:
    """VideoGrant.GetCanPublishSource: can_publish gates everything; an empty list means every source."""
    if not permission.can_publish:
        return False
    sources = permission.can_publish_sources
    return not sources or source in sources


def permission_from_grants(video: Mapping[str, Any]) -> ParticipantPermission:
    """VideoGrant.ToPermission: the three `can*` flags default to true when the claim is absent."""
    sources = [SOURCE_BY_NAME[s] for s in video.get("canPublishSources") or () if s in SOURCE_BY_NAME]
    return ParticipantPermission(
        can_subscribe=bool(video.get("canSubscribe", True)),
        can_publish=bool(video.get("canPublish", True)),
        can_publish_data=bool(video.get("canPublishData", True)),
        can_publish_sources=sources,
        hidden=bool(video.get("hidden", False)),
        recorder=bool(video.get("recorder", False)),
        can_update_metadata=bool(video.get("canUpdateOwnMetadata", False)),
        agent=bool(video.get("agent", False)),
    )


def kind_from_claim(kind: str) -> ParticipantInfo.Kind:
    return _KIND_BY_NAME.get(kind, ParticipantInfo.STANDARD)


@dataclass(slots=True)
class RoomState:
    info: Room
    participants: dict[str, ParticipantInfo] = field(default_factory=dict)


class EmulatorState:
    """Rooms by name, participants by identity. Every operation is O(1) or O(participants of one room)."""

    def __init__(self, listener: EventListener | None = None) -> None:
        self.rooms: dict[str, RoomState] = {}
        self.listener = listener

    # -- helpers -----------------------------------------------------------------------------------

    def _emit(
        self,
        event: str,
        room: Room,
        participant: ParticipantInfo | None = None,
        track: TrackInfo | None = None,
    ) -> None:
        if self.listener is not None:
            self.listener(event, room, participant, track)

    def _new_room(self, name: str) -> RoomState:
        now_ms = int(time.time() * 1000)
        info = Room(
            sid=new_sid("RM_"),
            name=name,
            empty_timeout=DEFAULT_EMPTY_TIMEOUT,
            departure_timeout=DEFAULT_DEPARTURE_TIMEOUT,
            creation_time=now_ms // 1000,
            creation_time_ms=now_ms,
        )
        room = RoomState(info)
        self.rooms[name] = room
        log.debug("room %s created (%s)", name, info.sid)
        self._emit("room_started", info)
        return room

    def _ensure_room(self, name: str) -> RoomState:
        room = self.rooms.get(name)
        return room if room is not None else self._new_room(name)

    @staticmethod
    def _weight(p: ParticipantInfo) -> tuple[int, int]:
        """What one participant adds to Room.num_participants / num_publishers (hidden ones count not)."""
        if p.permission.hidden:
            return 0, 0
        return 1, 1 if p.tracks else 0

    @staticmethod
    def _reweigh(room: RoomState, before: tuple[int, int], after: tuple[int, int]) -> None:
        # Kept incrementally: CreateRoom runs on every join and token refresh, so recounting a room of a
        # thousand participants there would dominate the emulator's cost.
        if before != after:
            room.info.num_participants += after[0] - before[0]
            room.info.num_publishers += after[1] - before[1]

    def participant(self, room: str, identity: str) -> ParticipantInfo:
        r = self.rooms.get(room)
        p = r.participants.get(identity) if r is not None else None
        if p is None:
            raise participant_not_found()
        return p

    def find_participant(self, room: str, identity: str) -> ParticipantInfo | None:
        r = self.rooms.get(room)
        return r.participants.get(identity) if r is not None else None

    @staticmethod
    def _touch(p: ParticipantInfo) -> None:
        # ParticipantInfo.version increases with every change, which clients use to drop stale updates.
        p.version += 1

    def _remove_track(self, room: RoomState, p: ParticipantInfo, index: int) -> None:
        before = self._weight(p)
        track = TrackInfo()
        track.CopyFrom(p.tracks[index])
        del p.tracks[index]
        p.is_publisher = len(p.tracks) > 0
        self._reweigh(room, before, self._weight(p))
        self._emit("track_unpublished", room.info, p, track)

    def _drop_participant(self, room: RoomState, identity: str, reason: DisconnectReason) -> None:
        p = room.participants.pop(identity, None)
        if p is None:
            return
        self._reweigh(room, self._weight(p), (0, 0))
        p.state = ParticipantInfo.DISCONNECTED
        p.disconnect_reason = reason
        log.debug("participant %s left %s (reason %s)", identity, room.info.name, reason)
        self._emit("participant_left", room.info, p)

    # -- RoomService -------------------------------------------------------------------------------

    def create_room(self, req: CreateRoomRequest) -> Room:
        """RoomAllocator.CreateRoom: idempotent; non-zero settings of the request update an existing room."""
        room = self._ensure_room(req.name)
        info = room.info
        if req.empty_timeout > 0:
            info.empty_timeout = req.empty_timeout
        if req.departure_timeout > 0:
            info.departure_timeout = req.departure_timeout
        if req.max_participants > 0:
            info.max_participants = req.max_participants
        if req.metadata:
            info.metadata = req.metadata
        return info

    def list_rooms(self, names: Iterable[str] = ()) -> list[Room]:
        wanted = list(names)
        if wanted:
            rooms = [r for r in (self.rooms.get(n) for n in wanted) if r is not None]
        else:
            rooms = list(self.rooms.values())
        return [r.info for r in rooms]

    def delete_room(self, name: str) -> None:
        room = self.rooms.get(name)
        if room is None:
            raise room_not_found()
        for identity in list(room.participants):
            self._drop_participant(room, identity, DisconnectReason.ROOM_DELETED)
        del self.rooms[name]
        log.debug("room %s deleted", name)
        self._emit("room_finished", room.info)

    def forget_room(self, name: str) -> list[str]:
        """What a LiveKit restart does to a room: it is gone with its participants and their permissions,
        and nobody is told (a node that dies sends no webhooks). Returns the identities it held."""
        room = self.rooms.pop(name, None)
        if room is None:
            return []
        log.debug("room %s forgotten with %d participants", name, len(room.participants))
        return list(room.participants)

    def list_participants(self, room: str) -> Iterable[ParticipantInfo]:
        # A missing room lists as empty (LiveKit answers 200 with no participants).
        r = self.rooms.get(room)
        return r.participants.values() if r is not None else ()

    def remove_participant(self, room: str, identity: str) -> None:
        r = self.rooms.get(room)
        if r is None or identity not in r.participants:
            raise participant_not_found()
        self._drop_participant(r, identity, DisconnectReason.PARTICIPANT_REMOVED)

    def mute_track(self, room: str, identity: str, track_sid: str, muted: bool) -> TrackInfo | None:
        """Server-side mute of a known participant's track; None for an unknown track sid (LiveKit: 200)."""
        p = self.participant(room, identity)
        if not muted:
            # Remote unmute is off by default in LiveKit (room.enable_remote_unmute).
            raise EmulatorError("failed_precondition", "remote unmute not enabled")
        for t in p.tracks:
            if t.sid == track_sid:
                if not t.muted:
                    t.muted = True
                    self._touch(p)
                return t
        return None

    def update_participant(self, req: UpdateParticipantRequest) -> ParticipantInfo:
        room = self.rooms.get(req.room)
        p = room.participants.get(req.identity) if room is not None else None
        if room is None or p is None:
            raise participant_not_found()
        # Empty strings mean "leave unchanged", as in LiveKit's UpdateParticipant handler.
        if req.metadata:
            p.metadata = req.metadata
        if req.name:
            p.name = req.name
        for key, value in req.attributes.items():
            # ParticipantImpl.SetAttributes: an empty value deletes the key.
            if value:
                p.attributes[key] = value
            else:
                p.attributes.pop(key, None)
        if req.HasField("permission"):
            # The whole permission is replaced (unset booleans become false), then tracks whose source is
            # no longer allowed are unpublished at once (ParticipantImpl.SetPermission).
            before = self._weight(p)
            p.permission.CopyFrom(req.permission)
            self._reweigh(room, before, self._weight(p))
            for i in range(len(p.tracks) - 1, -1, -1):
                if not source_allowed(p.permission, p.tracks[i].source):
                    self._remove_track(room, p, i)
        self._touch(p)
        return p

    def update_room_metadata(self, name: str, metadata: str) -> Room:
        room = self.rooms.get(name)
        if room is None:
            raise room_not_found()
        room.info.metadata = metadata
        return room.info

    # -- simulated clients -------------------------------------------------------------------------

    def join(
        self,
        room: str,
        identity: str,
        *,
        name: str = "",
        permission: ParticipantPermission,
        kind: ParticipantInfo.Kind = ParticipantInfo.STANDARD,
        metadata: str = "",
        attributes: Mapping[str, str] | None = None,
    ) -> ParticipantInfo:
        """A client connects: the room is auto-created, a previous session of the identity is replaced."""
        r = self._ensure_room(room)
        if identity in r.participants:
            self._drop_participant(r, identity, DisconnectReason.DUPLICATE_IDENTITY)
        now_ms = int(time.time() * 1000)
        p = ParticipantInfo(
            sid=new_sid("PA_"),
            identity=identity,
            name=name,
            state=ParticipantInfo.ACTIVE,
            metadata=metadata,
            joined_at=now_ms // 1000,
            joined_at_ms=now_ms,
            version=1,
            permission=permission,
            kind=kind,
            attributes=dict(attributes or {}),
        )
        r.participants[identity] = p
        self._reweigh(r, (0, 0), self._weight(p))
        log.debug("participant %s joined %s", identity, room)
        self._emit("participant_joined", r.info, p)
        return p

    def publish(self, room: str, identity: str, source: str, *, muted: bool = False) -> TrackInfo:
        src = SOURCE_BY_NAME.get(source)
        if src is None:
            raise ValueError(f"unknown track source {source!r}")
        r = self.rooms.get(room)
        p = r.participants.get(identity) if r is not None else None
        if r is None or p is None:
            raise LookupError(f"participant {identity!r} is not connected to room {room!r}")
        if not source_allowed(p.permission, src):
            raise PermissionError(f"participant {identity!r} may not publish {source}")
        before = self._weight(p)
        track = p.tracks.add(
            sid=new_sid("TR_"), type=_TYPE_BY_SOURCE[src], source=src, name=source, muted=muted
        )
        p.is_publisher = True
        self._reweigh(r, before, self._weight(p))
        self._touch(p)
        self._emit("track_published", r.info, p, track)
        return track

    def set_track_muted(self, room: str, identity: str, track_sid: str, muted: bool) -> TrackInfo:
        """The participant (un)mutes its own track, which LiveKit always allows."""
        p = self.find_participant(room, identity)
        if p is None:
            raise LookupError(f"participant {identity!r} is not connected to room {room!r}")
        for t in p.tracks:
            if t.sid == track_sid:
                if t.muted != muted:
                    t.muted = muted
                    self._touch(p)
                return t
        raise LookupError(f"participant {identity!r} has no track {track_sid!r}")

    def unpublish(self, room: str, identity: str, track_sid: str) -> None:
        """The participant unpublishes its own track, which LiveKit always allows."""
        r = self.rooms.get(room)
        p = r.participants.get(identity) if r is not None else None
        if r is None or p is None:
            raise LookupError(f"participant {identity!r} is not connected to room {room!r}")
        for index, track in enumerate(p.tracks):
            if track.sid == track_sid:
                self._remove_track(r, p, index)
                self._touch(p)
                return
        raise LookupError(f"participant {identity!r} has no track {track_sid!r}")

    def leave(self, room: str, identity: str) -> bool:
        r = self.rooms.get(room)
        if r is None or identity not in r.participants:
            return False
        self._drop_participant(r, identity, DisconnectReason.CLIENT_INITIATED)
        return True
