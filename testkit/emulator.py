"""Drives the LiveKit emulator process: simulated clients through its control routes, inspection through
the real ``livekit-api`` client."""

from __future__ import annotations

from typing import Any

import aiohttp
from livekit.api import LiveKitAPI
from livekit.protocol.models import ParticipantInfo, TrackSource
from livekit.protocol.room import ListParticipantsRequest, RoomParticipantIdentity

from testkit.processes import API_KEY, API_SECRET


class Emulator:
    def __init__(self, url: str) -> None:
        self.url = url

    async def __aenter__(self) -> Emulator:
        self._session = aiohttp.ClientSession()
        self.api = LiveKitAPI(self.url, API_KEY, API_SECRET)
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.api.aclose()
        await self._session.close()

    async def _post(self, path: str, body: dict[str, Any], *, expect: int = 200) -> dict[str, Any]:
        async with self._session.post(f"{self.url}/_emulator/{path}", json=body) as response:
            data: dict[str, Any] = await response.json()
            assert response.status == expect, (response.status, data)
            return data

    async def connect(self, token: str) -> dict[str, Any]:
        """A client connects to LiveKit with a token the service minted."""
        return await self._post("connect", {"token": token})

    async def publish(self, room: str, identity: str, source: str, *, expect: int = 200) -> str | None:
        data = await self._post(
            "publish", {"room": room, "identity": identity, "source": source, "muted": False}, expect=expect
        )
        return data.get("sid")

    async def set_muted(self, room: str, identity: str, track_sid: str, muted: bool) -> None:
        await self._post("mute", {"room": room, "identity": identity, "track_sid": track_sid, "muted": muted})

    async def fault(self, mode: str) -> None:
        await self._post("fault", {"mode": mode})

    async def set_webhook(self, url: str | None) -> None:
        await self._post("webhook", {"url": url})

    async def set_webhooks(self, *, enabled: bool) -> None:
        """Webhooks sent (to the URL set) or lost."""
        await self._post("webhook", {"enabled": enabled})

    async def forget(self, room: str) -> list[str]:
        """LiveKit restarts and loses the room; the identities it held (their clients may connect again
        with the tokens they hold)."""
        data = await self._post("forget", {"room": room})
        return list(data["identities"])

    async def delay(self, method: str, seconds: float) -> None:
        """Every call of a RoomService method waits this long before it is served (0: no delay)."""
        await self._post("delay", {"method": method, "seconds": seconds})

    async def bulk(self, room: str, count: int, prefix: str, sources: list[str]) -> list[str]:
        data = await self._post(
            "participants/bulk", {"room": room, "count": count, "prefix": prefix, "sources": sources}
        )
        return list(data["identities"])

    async def clear_calls(self) -> None:
        await self._post("calls/clear", {})

    async def calls(self, *, room: str | None = None) -> list[str]:
        """Every Twirp call's method so far; with ``room``, only the calls whose request named that
        room (the service's background work on other rooms, such as reconciliation, left out)."""
        log = await self._call_log()
        return [
            method
            for method, named in zip(log["calls"], log["rooms"], strict=True)
            if room is None or named == room
        ]

    async def traced_calls(self) -> list[tuple[str, str | None]]:
        """Every Twirp call received so far, with the ``traceparent`` header it carried."""
        log = await self._call_log()
        return list(zip(log["calls"], log["traceparents"], strict=True))

    async def _call_log(self) -> dict[str, list[Any]]:
        async with self._session.get(f"{self.url}/_emulator/calls") as response:
            log: dict[str, list[Any]] = await response.json()
            return log

    async def participant(self, room: str, identity: str) -> ParticipantInfo:
        return await self.api.room.get_participant(RoomParticipantIdentity(room=room, identity=identity))

    async def participants(self, room: str) -> dict[str, ParticipantInfo]:
        response = await self.api.room.list_participants(ListParticipantsRequest(room=room))
        return {p.identity: p for p in response.participants}


SOURCE_NAMES = {
    TrackSource.CAMERA: "camera",
    TrackSource.MICROPHONE: "microphone",
    TrackSource.SCREEN_SHARE: "screen_share",
    TrackSource.SCREEN_SHARE_AUDIO: "screen_share_audio",
}


def allowed_sources(info: ParticipantInfo) -> set[str]:
    """What a LiveKit participant may publish (an empty list means all, when it can publish)."""
    if not info.permission.can_publish:
        return set()
    if not info.permission.can_publish_sources:
        return set(SOURCE_NAMES.values())
    return {SOURCE_NAMES[s] for s in info.permission.can_publish_sources}


def microphone_tracks(info: ParticipantInfo) -> list[Any]:
    return [t for t in info.tracks if t.source == TrackSource.MICROPHONE]
