"""Carries out one command: checks, state, LiveKit, and the events it answers with."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from livekit_signaling.domain.errors import LiveKitRejected, LiveKitUnavailable
from livekit_signaling.domain.permissions import PublishPolicy, participant_grant, popout_grant
from livekit_signaling.domain.ports import ConnectedParticipant, LiveKit, StateStore, TokenIssuer
from livekit_signaling.domain.reconciliation import issued_to, plan_repairs
from livekit_signaling.domain.state import (
    RoomDecisions,
    RoomState,
    RosterEntry,
    issued_identities,
    popout_identity,
)
from livekit_signaling.schemas.commands import (
    MODERATOR_COMMANDS,
    Close,
    Command,
    CreateNewAccessToken,
    DisableMicrophoneRestrictions,
    EnableMicrophoneRestrictions,
    Envelope,
    ForceMute,
    GrantScreenSharePermission,
    Join,
    Leave,
    RequestPopoutStreamAccessToken,
    RevokeScreenSharePermission,
)
from livekit_signaling.schemas.events import (
    Credentials,
    CredentialsEvent,
    ErrorCode,
    ErrorEvent,
    Event,
    EventEnvelope,
    ForceMuted,
    JoinSuccess,
    MicrophoneRestrictionsDisabled,
    MicrophoneRestrictionsEnabled,
    MicrophoneRestrictionState,
    PopoutStreamAccessToken,
    RestrictionsDisabledState,
    RestrictionsEnabledState,
    ScreenSharePermissionsUpdated,
)

log = logging.getLogger(__name__)

#: Participant kinds that run next to the LiveKit server and get its private ``service_url``.
SERVICE_KINDS = frozenset({"sip", "recorder"})


@dataclass(frozen=True, slots=True)
class ConnectionUrls:
    public_url: str
    service_url: str | None = None


@dataclass(slots=True)
class Result:
    """The events a command produced and a one-word outcome for metrics and logs."""

    events: list[EventEnvelope]
    outcome: str = "ok"


def event_for(envelope: Envelope, recipient: str, payload: Event) -> EventEnvelope:
    return EventEnvelope(room=envelope.room, participant=recipient, payload=payload)


def error_result(envelope: Envelope, error: ErrorCode, *, detail: str | None = None) -> Result:
    """One error event for the sender; the outcome is the error's name."""
    event = ErrorEvent(error=error, detail=detail)
    return Result([event_for(envelope, envelope.participant, event)], outcome=error)


def restriction_state(decisions: RoomDecisions) -> MicrophoneRestrictionState:
    if decisions.microphone_restrictions is None:
        return RestrictionsDisabledState()
    return RestrictionsEnabledState(unrestricted_participants=list(decisions.microphone_restrictions))


def _unique(ids: Iterable[str]) -> list[str]:
    """Order-preserving de-duplication: a moderator naming someone twice acts once."""
    return list(dict.fromkeys(ids))


class CommandHandler:
    """Runs commands of one room at a time (the transport guarantees the per-room order).

    ``partition`` (of ``handle``) is the partition queue the command arrived on; the state writes record
    it, so that the replica holding that partition reconciles the room (``livekit_signaling.reconcile``).
    """

    def __init__(
        self,
        *,
        livekit: LiveKit,
        tokens: TokenIssuer,
        store: StateStore,
        policy: PublishPolicy,
        urls: ConnectionUrls,
    ) -> None:
        self._livekit = livekit
        self._tokens = tokens
        self._store = store
        self._policy = policy
        self._urls = urls

    async def handle(
        self,
        envelope: Envelope,
        command: Command,
        *,
        partition: int | None = None,
        sender_state: RoomState | None = None,
    ) -> Result:
        """``sender_state``: the room as ``load(room, (sender,))`` read it in this command's turn (the
        pipeline reads it with the duplicate check, in one round trip); read here when None."""
        if isinstance(command, MODERATOR_COMMANDS) and envelope.role != "moderator":
            return error_result(envelope, "insufficient_permissions")
        try:
            return await self._dispatch(envelope, command, partition, sender_state)
        except LiveKitUnavailable:
            return error_result(envelope, "livekit_unavailable")
        except LiveKitRejected as rejected:
            # LiveKit refused our own credentials or scope: what the seed calls
            # insufficient_permissions. Our configuration is at fault, so say so loudly.
            log.error("LiveKit refused a call: %s", rejected)
            return error_result(envelope, "insufficient_permissions")

    async def _dispatch(  # noqa: PLR0911
        self, envelope: Envelope, command: Command, partition: int | None, sender_state: RoomState | None
    ) -> Result:
        match command:
            case Join():
                return await self._join(envelope, partition, sender_state)
            case CreateNewAccessToken():
                return await self._refresh_credentials(envelope, partition, sender_state)
            case RequestPopoutStreamAccessToken():
                return await self._popout(envelope, partition, sender_state)
            case ForceMute(participants=targets):
                return await self._force_mute(envelope, targets)
            case GrantScreenSharePermission(participants=targets):
                return await self._screen_share(envelope, targets, partition, grant=True)
            case RevokeScreenSharePermission(participants=targets):
                return await self._screen_share(envelope, targets, partition, grant=False)
            case EnableMicrophoneRestrictions(unrestricted_participants=unrestricted):
                return await self._set_restrictions(envelope, _unique(unrestricted), partition)
            case DisableMicrophoneRestrictions():
                return await self._set_restrictions(envelope, None, partition)
            case Leave():
                return await self._leave(envelope, partition)
            case Close():
                return await self._close(envelope, partition)

    # -- tokens -------------------------------------------------------------------------------------

    async def _sender_in_roster(
        self,
        envelope: Envelope,
        partition: int | None,
        loaded: RoomState | None,
        *,
        new_popouts: int = 0,
    ) -> tuple[RoomState, RosterEntry]:
        """The sender's roster entry, added or updated from the envelope (the controller is the
        authority on role and kind) and with ``new_popouts`` more popout identities; saved once, and
        only when it changed. Reads and writes only this entry and the room's decisions."""
        room = (
            loaded if loaded is not None else await self._store.load(envelope.room, (envelope.participant,))
        )
        known = room.participants.get(envelope.participant)
        popouts = (known.popouts if known is not None else 0) + new_popouts
        entry = RosterEntry(role=envelope.role, kind=envelope.kind, popouts=popouts)
        if known == entry:
            return room, known
        room.participants[envelope.participant] = entry
        await self._store.save_entry(envelope.room, room, envelope.participant, partition=partition)
        return room, entry

    def _credentials(self, envelope: Envelope, room: RoomState, entry: RosterEntry) -> Credentials:
        grant = participant_grant(envelope.room, envelope.participant, entry, room.decisions, self._policy)
        return Credentials(
            room=envelope.room,
            token=self._tokens.issue(grant),
            public_url=self._urls.public_url,
            service_url=self._urls.service_url if entry.kind in SERVICE_KINDS else None,
        )

    async def _join(self, envelope: Envelope, partition: int | None, loaded: RoomState | None) -> Result:
        await self._livekit.ensure_room(envelope.room)
        room, entry = await self._sender_in_roster(envelope, partition, loaded)
        event = JoinSuccess(
            credentials=self._credentials(envelope, room, entry),
            microphone_restriction_state=restriction_state(room.decisions),
        )
        return Result([event_for(envelope, envelope.participant, event)])

    async def _refresh_credentials(
        self, envelope: Envelope, partition: int | None, loaded: RoomState | None
    ) -> Result:
        await self._livekit.ensure_room(envelope.room)
        room, entry = await self._sender_in_roster(envelope, partition, loaded)
        credentials = self._credentials(envelope, room, entry)
        event = CredentialsEvent(
            room=credentials.room,
            token=credentials.token,
            public_url=credentials.public_url,
            service_url=credentials.service_url,
        )
        return Result([event_for(envelope, envelope.participant, event)])

    async def _popout(self, envelope: Envelope, partition: int | None, loaded: RoomState | None) -> Result:
        _, entry = await self._sender_in_roster(envelope, partition, loaded, new_popouts=1)
        identity = popout_identity(envelope.participant, entry.popouts)
        token = self._tokens.issue(popout_grant(envelope.room, identity))
        return Result([event_for(envelope, envelope.participant, PopoutStreamAccessToken(token=token))])

    # -- moderation ---------------------------------------------------------------------------------

    def _split_known(self, room: RoomState, targets: Iterable[str]) -> tuple[list[str], list[str]]:
        known: list[str] = []
        unknown: list[str] = []
        for target in _unique(targets):
            (known if target in room.participants else unknown).append(target)
        return known, unknown

    def _with_unknown(self, envelope: Envelope, events: list[EventEnvelope], unknown: list[str]) -> Result:
        if not unknown:
            return Result(events)
        error = ErrorEvent(error="unknown_participants", participants=unknown)
        return Result([*events, event_for(envelope, envelope.participant, error)], "unknown_participants")

    async def _force_mute(self, envelope: Envelope, targets: list[str]) -> Result:
        room = await self._store.load(envelope.room, _unique(targets))
        known, unknown = self._split_known(room, targets)
        connected = {p.identity: p for p in await self._livekit.list_participants(envelope.room)}

        async def mute(participant: ConnectedParticipant) -> None:
            await asyncio.gather(
                *(
                    self._livekit.mute_track(envelope.room, participant.identity, track)
                    for track in participant.unmuted_microphone_tracks
                )
            )

        to_mute = [
            connected[target]
            for target in known
            if target in connected and connected[target].unmuted_microphone_tracks
        ]
        await asyncio.gather(*(mute(participant) for participant in to_mute))
        muted_event = ForceMuted(moderator=envelope.participant)
        events = [event_for(envelope, participant.identity, muted_event) for participant in to_mute]
        return self._with_unknown(envelope, events, unknown)

    async def _screen_share(
        self, envelope: Envelope, targets: list[str], partition: int | None, *, grant: bool
    ) -> Result:
        room = await self._store.load(envelope.room, _unique(targets))
        known, unknown = self._split_known(room, targets)
        decisions = room.decisions.screen_share
        if any(decisions.get(target) != grant for target in known):
            for target in known:
                decisions[target] = grant
            await self._store.save_decisions(envelope.room, room, partition=partition)
        await self._apply_permissions(envelope.room, room, only=frozenset(known))
        event = ScreenSharePermissionsUpdated(grant=grant, participants=known)
        return self._with_unknown(envelope, [event_for(envelope, envelope.participant, event)], unknown)

    async def _set_restrictions(
        self, envelope: Envelope, unrestricted: list[str] | None, partition: int | None
    ) -> Result:
        room = await self._store.load(envelope.room)  # the whole roster: everybody is told
        if room.decisions.microphone_restrictions != unrestricted:
            room.decisions.microphone_restrictions = unrestricted
            await self._store.save_decisions(envelope.room, room, partition=partition)
        # Applied even when the state did not change: a repeated command repairs a LiveKit that missed
        # an earlier update.
        await self._apply_permissions(envelope.room, room)
        payload: Event = (
            MicrophoneRestrictionsDisabled()
            if unrestricted is None
            else MicrophoneRestrictionsEnabled(unrestricted_participants=unrestricted)
        )
        return Result([event_for(envelope, participant, payload) for participant in room.participants])

    async def _apply_permissions(
        self, room_name: str, room: RoomState, *, only: frozenset[str] | None = None
    ) -> None:
        """Bring every connected participant's (or only the named ones') LiveKit permission in line
        with the room's state, concurrently; unchanged participants cost nothing. An identity the room
        does not know loses its microphone while restrictions forbid it and is never disconnected here
        (a moderator's decision on a room whose state expired must not empty the room); disconnecting
        is the reconciler's, which checks only rooms whose state stands."""
        connected: list[ConnectedParticipant] = [
            participant
            for participant in await self._livekit.list_participants(room_name)
            if only is None or participant.identity in only
        ]
        repairs = plan_repairs(room, connected, self._policy, disconnect_unknown=False)
        changes = [(repair.participant, repair.sources) for repair in repairs if repair.sources is not None]
        if changes:
            await self._livekit.set_publish_sources(room_name, changes)

    async def reapply_permissions(self, room_name: str, identity: str) -> None:
        """Re-check one participant who just joined or published (LiveKit webhook): a token minted
        before a restriction still carries the old sources."""
        room = await self._store.load(room_name, (issued_to(identity),))
        await self._apply_permissions(room_name, room, only=frozenset({identity}))

    # -- lifecycle ----------------------------------------------------------------------------------

    async def _leave(self, envelope: Envelope, partition: int | None) -> Result:
        room = await self._store.load(envelope.room, (envelope.participant,))
        entry = room.participants.get(envelope.participant)
        identities = (
            issued_identities(envelope.participant, entry) if entry is not None else [envelope.participant]
        )
        await asyncio.gather(
            *(self._livekit.remove_participant(envelope.room, identity) for identity in identities)
        )
        if entry is not None:
            del room.participants[envelope.participant]
            await self._store.save_entry(envelope.room, room, envelope.participant, partition=partition)
        return Result([])

    async def _close(self, envelope: Envelope, partition: int | None) -> Result:
        await self._livekit.delete_room(envelope.room)
        await self._store.delete(envelope.room, partition=partition)
        return Result([])
