"""A client for the emulator's control routes (``/_emulator/...``): simulated LiveKit clients and a view of
what the emulator holds. Used by the dev console; it is not LiveKit's API (that is ``livekit-api``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp

#: The control routes answer at once; anything slower means the emulator is gone.
CONTROL_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class ControlAnswer:
    """HTTP status and JSON body of a control route; ``error`` is the emulator's reason when refused."""

    status: int
    body: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def error(self) -> str:
        return str(self.body.get("error", f"HTTP {self.status}"))


class EmulatorControl:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=CONTROL_TIMEOUT_SECONDS)
            )
        return self._session

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def _post(self, route: str, body: dict[str, Any]) -> ControlAnswer:
        async with self._http().post(f"{self.url}/_emulator/{route}", json=body) as response:
            data = await response.json(content_type=None)
            return ControlAnswer(response.status, data if isinstance(data, dict) else {})

    async def rooms(self) -> list[dict[str, Any]]:
        """Every room with its participants, tracks and permissions (``GET /_emulator/rooms``)."""
        async with self._http().get(f"{self.url}/_emulator/rooms") as response:
            response.raise_for_status()
            data = await response.json()
            rooms: list[dict[str, Any]] = data["rooms"]
            return rooms

    async def connect(self, token: str) -> ControlAnswer:
        """A client joins with an access token; 401 when LiveKit would refuse the token."""
        return await self._post("connect", {"token": token})

    async def publish(self, room: str, identity: str, source: str) -> ControlAnswer:
        """Publish a track; 403 when the participant's permission does not allow the source."""
        return await self._post("publish", {"room": room, "identity": identity, "source": source})

    async def unpublish(self, room: str, identity: str, track_sid: str) -> ControlAnswer:
        return await self._post("unpublish", {"room": room, "identity": identity, "track_sid": track_sid})

    async def set_muted(self, room: str, identity: str, track_sid: str, muted: bool) -> ControlAnswer:
        """The client (un)mutes its own track, which LiveKit always allows."""
        return await self._post(
            "mute", {"room": room, "identity": identity, "track_sid": track_sid, "muted": muted}
        )

    async def disconnect(self, room: str, identity: str) -> ControlAnswer:
        return await self._post("disconnect", {"room": room, "identity": identity})

    async def forget(self, room: str) -> ControlAnswer:
        """LiveKit restarts and loses the room: its participants are gone, nobody is told."""
        return await self._post("forget", {"room": room})

    async def set_webhooks(self, *, enabled: bool) -> ControlAnswer:
        """Whether LiveKit's webhooks are sent (off: lost, as undelivered webhooks are)."""
        return await self._post("webhook", {"enabled": enabled})
