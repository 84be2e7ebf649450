"""Simulated LiveKit clients: what a participant's client does (connect, publish, mute, ...), done on the
emulated LiveKit, which enforces the permissions the service set as LiveKit would."""

from __future__ import annotations

import aiohttp
import msgspec

from livekit_signaling.client import CommandError, CommandTimeout
from livekit_signaling.console.controller import Controller
from livekit_signaling.console.rooms import LoadRoom
from livekit_signaling.console.traffic import Traffic
from livekit_signaling.console.views import (
    ClientOutcome,
    ClientRequest,
    LiveKitParticipant,
    Refused,
    livekit_rooms,
)
from livekit_signaling.domain.errors import StoreUnavailable
from livekit_signaling.emulator.control import ControlAnswer, EmulatorControl

#: How long a simulated client waits for fresh credentials before giving up.
CREDENTIALS_TIMEOUT_SECONDS = 5.0
SOURCES = ("camera", "microphone", "screen_share", "screen_share_audio")


def said(answer: ControlAnswer, success: str) -> ClientOutcome:
    """What the emulator's answer means for the client: ``success``, or why LiveKit refused."""
    if answer.ok:
        return ClientOutcome(ok=True, outcome=success)
    refused = "LiveKit refused" if answer.status in (401, 403) else "failed"
    return ClientOutcome(ok=False, outcome=f"{refused}: {answer.error}")


class SimulatedClients:
    def __init__(
        self, *, emulator: EmulatorControl, load_room: LoadRoom, traffic: Traffic, controller: Controller
    ) -> None:
        self._emulator = emulator
        self._load_room = load_room
        self._traffic = traffic
        self._controller = controller

    async def act(self, action: str, request: ClientRequest) -> ClientOutcome:
        """One thing a participant's LiveKit client does; Refused when it cannot be tried."""
        try:
            return await self._act(action, request)
        except msgspec.ValidationError as error:
            raise Refused(502, f"the emulated LiveKit answered an unexpected shape ({error})") from None
        except (aiohttp.ClientError, TimeoutError) as error:
            raise Refused(502, f"the emulated LiveKit did not answer ({type(error).__name__})") from None

    async def _act(self, action: str, request: ClientRequest) -> ClientOutcome:
        room, identity, track_sid = request.room, request.participant, request.track_sid
        match action:
            case "connect":
                return await self._connect(room, identity)
            case "disconnect":
                await self._emulator.disconnect(room, identity)
                return ClientOutcome(ok=True, outcome="disconnected")
            case "publish":
                source = request.source
                if source not in SOURCES:
                    raise Refused(400, f'"source" must be one of {", ".join(SOURCES)}')
                return said(await self._emulator.publish(room, identity, source), f"published {source}")
            case "unpublish":
                return said(await self._emulator.unpublish(room, identity, track_sid), "unpublished")
            case "mute" | "unmute":
                answer = await self._emulator.set_muted(room, identity, track_sid, action == "mute")
                return said(answer, f"{action}d")
            case "unmute_microphone":
                return await self._unmute_microphone(room, identity)
        raise Refused(404, f"no client action {action!r}")

    async def _connect(self, room: str, identity: str) -> ClientOutcome:
        """Connect with the token the service last handed this identity, or ask for fresh credentials
        as a client would (tokens live ``TOKEN_TTL_SECONDS``)."""
        token = self._traffic.token_for(room, identity)
        how = "with the token from its last join_success / credentials"
        if token is None:
            token = await self._fresh_token(room, identity)
            how = "with fresh credentials (create_new_access_token)"
        return said(await self._emulator.connect(token), f"connected {how}")

    async def _fresh_token(self, room: str, identity: str) -> str:
        """Send ``create_new_access_token`` as ``identity``, with its role and kind from the roster."""
        try:
            state = await self._load_room(room)
        except StoreUnavailable as error:
            raise Refused(400, f"state store unavailable ({error})") from None
        entry = state.participants.get(identity)
        if entry is None:
            raise Refused(
                400,
                f"{identity} has no valid token and is not in the roster of {room}: send a join "
                "(popouts: request_popout_stream_access_token) first",
            )
        try:
            credentials = await self._controller.credentials(
                room, identity, role=entry.role, kind=entry.kind, timeout=CREDENTIALS_TIMEOUT_SECONDS
            )
        except CommandTimeout:
            raise Refused(
                504, f"no credentials for {identity} in {CREDENTIALS_TIMEOUT_SECONDS:g} s"
            ) from None
        except CommandError as error:
            raise Refused(400, f"the service answered {error} instead of credentials") from None
        return credentials.token

    async def _unmute_microphone(self, room: str, identity: str) -> ClientOutcome:
        """What a LiveKit client's ``setMicrophoneEnabled(true)`` does: unmute the microphone track if
        there is one (LiveKit always lets a participant unmute itself), else publish a new one (which
        LiveKit refuses when the permission does not allow the microphone)."""
        participant = await self._livekit_participant(room, identity)
        if participant is None:
            return ClientOutcome(ok=False, outcome="not connected")
        microphone = next((t for t in participant.tracks if t.source == "microphone"), None)
        if microphone is None:
            answer = await self._emulator.publish(room, identity, "microphone")
            return said(answer, "no microphone track: published a new one")
        if not microphone.muted:
            return ClientOutcome(ok=True, outcome="the microphone is not muted")
        return said(await self._emulator.set_muted(room, identity, microphone.sid, False), "unmuted")

    async def _livekit_participant(self, room: str, identity: str) -> LiveKitParticipant | None:
        for livekit_room in livekit_rooms(await self._emulator.rooms()):
            if livekit_room.name == room:
                return next((p for p in livekit_room.participants if p.identity == identity), None)
        return None
