"""The rooms the page shows, read from both sides (the service's state store and the emulated LiveKit),
and sent to the open pages whenever they changed."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time

import aiohttp
import msgspec

from livekit_signaling.console.rooms import LoadRoom, RecentRepairsOf, is_gone, room_view
from livekit_signaling.console.stream import LiveStream
from livekit_signaling.console.traffic import Traffic
from livekit_signaling.console.views import LiveKitRoom, RoomsView, RoomView, livekit_rooms, to_json
from livekit_signaling.domain.errors import StoreUnavailable
from livekit_signaling.domain.permissions import PublishPolicy
from livekit_signaling.domain.state import RoomState
from livekit_signaling.emulator.control import EmulatorControl

log = logging.getLogger(__name__)

#: How often the rooms are re-read while a page is open; events and the console's own actions also
#: trigger a re-read at once. LiveKit reports no mute changes by webhook, so some polling is needed.
POLL_SECONDS = 0.5


class RoomWatch:
    def __init__(
        self,
        *,
        load_room: LoadRoom,
        emulator: EmulatorControl,
        traffic: Traffic,
        stream: LiveStream,
        poll_seconds: float = POLL_SECONDS,
        policy: PublishPolicy | None = None,
        disconnect_unknown: bool = True,
        recent_repairs: RecentRepairsOf = lambda _room: (),
    ) -> None:
        self._load_room = load_room
        self._policy = policy or PublishPolicy()
        self._disconnect_unknown = disconnect_unknown
        self._recent_repairs = recent_repairs
        #: Whether the emulated LiveKit sends webhooks, as the console last set it.
        self.webhooks = True
        self._emulator = emulator
        self._traffic = traffic
        self._stream = stream
        self._poll_seconds = poll_seconds
        #: Rooms seen in events, commands or LiveKit, in the order they were first seen.
        self._rooms: dict[str, None] = {}
        #: The last outcome of a simulated client's action, by room and identity.
        self._outcomes: dict[tuple[str, str], str] = {}
        self._poke = asyncio.Event()
        self._last_sent = b""

    def notice(self, room: str) -> None:
        """Something happened in ``room`` (shown from now on; "" for no room): re-read the rooms at once."""
        if room:
            self._rooms.setdefault(room, None)
        self._poke.set()

    def note_outcome(self, room: str, identity: str, outcome: str) -> None:
        self._outcomes[(room, identity)] = f"{time.strftime('%H:%M:%S')} {outcome}"
        self._poke.set()

    async def read(self) -> RoomsView:
        """Every known room from both sides; rooms neither side knows any more are dropped."""
        livekit_error = None
        try:
            livekit = {room.name: room for room in livekit_rooms(await self._emulator.rooms())}
        except msgspec.ValidationError as error:
            livekit, livekit_error = {}, f"the emulated LiveKit answered an unexpected shape ({error})"
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            livekit, livekit_error = {}, f"the emulated LiveKit did not answer ({type(error).__name__})"
        for name in livekit:
            self._rooms.setdefault(name, None)
        views = []
        for name in list(self._rooms):
            view = await self._read_room(name, livekit.get(name), livekit_known=livekit_error is None)
            if view is not None:
                views.append(view)
        return RoomsView(rooms=views, livekit_error=livekit_error, webhooks=self.webhooks)

    async def _read_room(
        self, name: str, livekit: LiveKitRoom | None, *, livekit_known: bool
    ) -> RoomView | None:
        state: RoomState | None
        state_error = None
        try:
            state = await self._load_room(name)
        except StoreUnavailable as error:
            state, state_error = None, f"state store unavailable ({error})"
        if state_error is None and livekit_known and is_gone(state, livekit):
            self._forget(name)
            return None
        return room_view(
            name,
            state,
            livekit,
            state_error=state_error,
            has_token=functools.partial(self._traffic.has_token, name),
            outcomes={identity: text for (room, identity), text in self._outcomes.items() if room == name},
            policy=self._policy,
            disconnect_unknown=self._disconnect_unknown,
            repairs=self._recent_repairs(name),
        )

    def _forget(self, name: str) -> None:
        self._rooms.pop(name, None)
        self._traffic.forget_room(name)
        for key in [key for key in self._outcomes if key[0] == name]:
            del self._outcomes[key]

    async def run(self) -> None:
        """While a page is open, send the rooms whenever they changed."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), self._poll_seconds)
            self._poke.clear()
            if not self._stream.is_watched:
                continue
            try:
                view = await self.read()
            except Exception as error:  # the page must keep going whatever one read did
                log.warning("console: could not read the rooms (%s)", type(error).__name__)
                continue
            encoded = to_json(view)
            if encoded != self._last_sent:
                self._last_sent = encoded
                self._stream.broadcast("rooms", view)
