"""The dev console: a page that shows both sides of the signaling at once, and its JSON and SSE endpoints.

Mounted by ``livekit-signaling dev`` only (the page shows access tokens and sends commands as anyone), on
the service's HTTP port:

- ``GET /``: the page; ``GET /console/<file>``: its script and style sheet.
- ``GET /console/snapshot``: rooms, sent commands and events as JSON.
- ``GET /console/stream``: the same, live, as server-sent events: ``reset`` (everything, on connect),
  then ``event``, ``command`` (a sent command, again whenever an answer arrives) and ``rooms``.
- ``POST /console/commands``: publish an envelope to the command exchange as a controller does.
- ``POST /console/clients/<action>``: act as a participant's LiveKit client on the emulator.

Everything it needs is injected: the room state (a read function), RabbitMQ (URL and exchange names)
and the emulator (its URL); it imports nothing from ``livekit_signaling.app``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.resources
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from livekit_signaling.console.rooms import is_gone, room_view
from livekit_signaling.console.traffic import SentCommand, Traffic
from livekit_signaling.domain.errors import StoreUnavailable
from livekit_signaling.domain.state import RoomState
from livekit_signaling.emulator.control import ControlAnswer, EmulatorControl
from livekit_signaling.schemas.routing import command_routing_key
from livekit_signaling.transport.controller import ControllerLink, WatchedEvent

log = logging.getLogger(__name__)

LoadRoom = Callable[[str], Awaitable[RoomState]]

#: Files of ``static/`` the page loads, with their content types (nothing else is served from there).
STATIC_FILES = {
    "index.html": "text/html",
    "console.css": "text/css",
    "console.js": "text/javascript",
}
#: How often the rooms are re-read while a page is open; events and the console's own actions also
#: trigger a re-read at once. LiveKit reports no mute changes by webhook, so some polling is needed.
POLL_SECONDS = 0.5
#: A comment line keeps idle streams open through proxies and lets a dead client be noticed.
KEEPALIVE_SECONDS = 15.0
#: Messages queued for one page; a page that falls this far behind is disconnected (its EventSource
#: reconnects and starts over from a ``reset``).
SUBSCRIBER_BACKLOG = 1000
#: How long a simulated client waits for fresh credentials before giving up.
CREDENTIALS_TIMEOUT_SECONDS = 5.0
AMQP_RETRY_SECONDS = 2.0
SOURCES = ("camera", "microphone", "screen_share", "screen_share_audio")


def _sse(kind: str, data: object) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _bad_request(reason: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": reason}), content_type="application/json")


class Console:
    def __init__(
        self,
        *,
        load_room: LoadRoom,
        amqp_urls: Sequence[str],
        command_exchange: str,
        event_exchange: str,
        emulator_url: str,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self._load_room = load_room
        self._link = ControllerLink(
            amqp_urls,
            command_exchange=command_exchange,
            event_exchange=event_exchange,
            connection_name=f"livekit-signaling-console-{uuid.uuid4().hex[:6]}",
        )
        self._emulator = EmulatorControl(emulator_url)
        self._poll_seconds = poll_seconds
        self.traffic = Traffic()
        #: Rooms seen in events, commands or LiveKit, in the order they were first seen.
        self._rooms: dict[str, None] = {}
        #: The last outcome of a simulated client's action, by room and identity.
        self._outcomes: dict[tuple[str, str], str] = {}
        self._subscribers: set[asyncio.Queue[bytes | None]] = set()
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._poke = asyncio.Event()
        self._last_rooms = ""
        self._tasks: list[asyncio.Task[None]] = []

    # -- mounting and lifecycle -----------------------------------------------------------------------

    def install(self, app: web.Application) -> None:
        """Add the console's routes to ``app`` and tie its background work to the app's lifecycle."""
        app.router.add_get("/", self._page)
        app.router.add_get("/console/snapshot", self._snapshot)
        app.router.add_get("/console/stream", self._stream)
        app.router.add_post("/console/commands", self._send_command)
        app.router.add_post("/console/clients/{action}", self._client_action)
        app.router.add_get("/console/{name}", self._static_file)
        app.on_startup.append(self._start)
        # on_shutdown runs before aiohttp waits for open requests: the streams must end there, or
        # shutdown would wait for them.
        app.on_shutdown.append(self._end_streams)
        app.on_cleanup.append(self._stop)

    async def _start(self, _app: web.Application) -> None:
        self._tasks = [
            asyncio.create_task(self._connect_amqp(), name="console-amqp"),
            asyncio.create_task(self._watch_rooms(), name="console-rooms"),
        ]

    async def _end_streams(self, _app: web.Application) -> None:
        for queue in self._subscribers:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)

    async def _stop(self, _app: web.Application) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._link.close()
        await self._emulator.close()

    async def _connect_amqp(self) -> None:
        """Connect once RabbitMQ answers (the service waits for it too); the link reconnects itself."""
        while True:
            try:
                await self._link.connect(self._on_event)
            except Exception as error:
                log.warning("console: RabbitMQ not reachable (%s); retrying", type(error).__name__)
                await asyncio.sleep(AMQP_RETRY_SECONDS)
            else:
                log.info("console: watching the event exchange")
                return

    # -- what passes on the broker ------------------------------------------------------------------

    def _on_event(self, watched: WatchedEvent) -> None:
        event, command = self.traffic.record_event(watched.routing_key, watched.correlation_id, watched.body)
        if event.room:
            self._rooms.setdefault(event.room, None)
        self._broadcast("event", event.to_json())
        if command is not None:
            self._broadcast("command", command.to_json())
            waiting = self._waiting.get(command.message_id)
            if waiting is not None and not waiting.done() and isinstance(event.body, dict):
                waiting.set_result(event.body)
        self._poke.set()

    def _broadcast(self, kind: str, data: object) -> None:
        if not self._subscribers:
            return
        message = _sse(kind, data)
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(message)
            except asyncio.QueueFull:
                # Too far behind: drop it; the page reconnects and gets a fresh reset.
                self._subscribers.discard(queue)
                queue.get_nowait()
                queue.put_nowait(None)

    # -- rooms --------------------------------------------------------------------------------------

    async def _rooms_view(self) -> dict[str, Any]:
        livekit_error = None
        try:
            livekit_rooms = {room["name"]: room for room in await self._emulator.rooms()}
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as error:
            livekit_rooms = {}
            livekit_error = f"the emulated LiveKit did not answer ({type(error).__name__})"
        for name in livekit_rooms:
            self._rooms.setdefault(name, None)
        views = []
        for name in list(self._rooms):
            state: RoomState | None
            state_error = None
            try:
                state = await self._load_room(name)
            except StoreUnavailable as error:
                state, state_error = None, f"state store unavailable ({error})"
            livekit = livekit_rooms.get(name)
            if state_error is None and livekit_error is None and is_gone(state, livekit):
                self._forget_room(name)
                continue
            views.append(
                room_view(
                    name,
                    state,
                    livekit,
                    state_error=state_error,
                    has_token=functools.partial(self.traffic.has_token, name),
                    outcomes={
                        identity: text for (room, identity), text in self._outcomes.items() if room == name
                    },
                )
            )
        return {"rooms": views, "livekit_error": livekit_error}

    def _forget_room(self, name: str) -> None:
        self._rooms.pop(name, None)
        self.traffic.forget_room(name)
        for key in [key for key in self._outcomes if key[0] == name]:
            del self._outcomes[key]

    async def _watch_rooms(self) -> None:
        """While a page is open, send the rooms whenever they changed."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), self._poll_seconds)
            self._poke.clear()
            if not self._subscribers:
                continue
            try:
                view = await self._rooms_view()
            except Exception as error:  # the page must keep going whatever one read did
                log.warning("console: could not read the rooms (%s)", type(error).__name__)
                continue
            encoded = json.dumps(view, sort_keys=True)
            if encoded != self._last_rooms:
                self._last_rooms = encoded
                self._broadcast("rooms", view)

    async def _everything(self) -> dict[str, Any]:
        return {
            **await self._rooms_view(),
            "amqp_connected": self._link.is_connected,
            "commands": [command.to_json() for command in self.traffic.commands.values()],
            "events": [event.to_json() for event in self.traffic.events],
        }

    # -- HTTP: page and reads -----------------------------------------------------------------------

    async def _page(self, _request: web.Request) -> web.Response:
        return self._file("index.html")

    async def _static_file(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC_FILES or name == "index.html":
            raise web.HTTPNotFound()
        return self._file(name)

    @staticmethod
    def _file(name: str) -> web.Response:
        # Read on every request and not cached: a developer who edits a file sees it on reload.
        body = importlib.resources.files(__package__).joinpath("static", name).read_bytes()
        return web.Response(
            body=body, content_type=STATIC_FILES[name], charset="utf-8", headers={"Cache-Control": "no-cache"}
        )

    async def _snapshot(self, _request: web.Request) -> web.Response:
        return web.json_response(await self._everything())

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(SUBSCRIBER_BACKLOG)
        # Subscribed before the reset is built: what arrives meanwhile is sent twice rather than lost;
        # the page keys events by seq and commands by message id.
        self._subscribers.add(queue)
        try:
            await response.write(_sse("reset", await self._everything()))
            while True:
                try:
                    message = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
                except TimeoutError:
                    message = b": keep-alive\n\n"
                if message is None:
                    break
                await response.write(message)
        except ConnectionResetError:
            pass  # the page went away
        finally:
            self._subscribers.discard(queue)
        return response

    # -- HTTP: actions ------------------------------------------------------------------------------

    @staticmethod
    async def _json_object(request: web.Request) -> dict[str, Any]:
        """The request's JSON object. Only same-origin JSON is taken: a page of another site can post
        a form to this port (the browser does not ask first), but not JSON, and it sends its Origin."""
        origin = request.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc != request.host:
            raise web.HTTPForbidden(
                text=json.dumps({"error": "cross-origin request"}), content_type="application/json"
            )
        if request.content_type != "application/json":
            raise web.HTTPUnsupportedMediaType(
                text=json.dumps({"error": "expected application/json"}), content_type="application/json"
            )
        try:
            data = await request.json()
        except ValueError as error:
            raise _bad_request(f"not JSON: {error}") from None
        if not isinstance(data, dict):
            raise _bad_request("expected a JSON object")
        return data

    async def _send_command(self, request: web.Request) -> web.Response:
        envelope = await self._json_object(request)
        room = envelope.get("room")
        if not isinstance(room, str) or not room:
            raise _bad_request('the envelope needs a "room": commands are routed by room.<room>')
        command = await self._publish(room, envelope)
        return web.json_response(command.to_json())

    async def _publish(self, room: str, envelope: dict[str, Any]) -> SentCommand:
        if not self._link.is_connected:
            raise web.HTTPServiceUnavailable(
                text=json.dumps({"error": "not connected to RabbitMQ"}), content_type="application/json"
            )
        message_id = uuid.uuid4().hex
        routing_key = command_routing_key(room)
        # Recorded before publishing: the answer can arrive before the confirm does.
        command = self.traffic.record_command(message_id, routing_key, envelope)
        self._rooms.setdefault(room, None)
        try:
            await self._link.publish_command(routing_key, json.dumps(envelope).encode(), message_id)
        except ConnectionError as error:
            raise web.HTTPServiceUnavailable(
                text=json.dumps({"error": str(error)}), content_type="application/json"
            ) from None
        self._broadcast("command", command.to_json())
        self._poke.set()
        return command

    async def _client_action(self, request: web.Request) -> web.Response:
        action = request.match_info["action"]
        data = await self._json_object(request)
        room, identity = data.get("room"), data.get("participant")
        if not isinstance(room, str) or not isinstance(identity, str) or not room or not identity:
            raise _bad_request('"room" and "participant" are required')
        try:
            ok, outcome = await self._act(action, room, identity, data)
        except (aiohttp.ClientError, TimeoutError) as error:
            raise web.HTTPBadGateway(
                text=json.dumps({"error": f"the emulated LiveKit did not answer ({type(error).__name__})"}),
                content_type="application/json",
            ) from None
        self._outcomes[(room, identity)] = f"{time.strftime('%H:%M:%S')} {outcome}"
        self._poke.set()
        return web.json_response({"ok": ok, "outcome": outcome})

    async def _act(self, action: str, room: str, identity: str, data: dict[str, Any]) -> tuple[bool, str]:
        """One thing a participant's LiveKit client does; returns whether LiveKit accepted it and why."""
        track_sid = str(data.get("track_sid", ""))
        match action:
            case "connect":
                return await self._connect(room, identity)
            case "disconnect":
                await self._emulator.disconnect(room, identity)
                return True, "disconnected"
            case "publish":
                source = data.get("source")
                if source not in SOURCES:
                    raise _bad_request(f'"source" must be one of {", ".join(SOURCES)}')
                return self._said(await self._emulator.publish(room, identity, source), f"published {source}")
            case "unpublish":
                return self._said(await self._emulator.unpublish(room, identity, track_sid), "unpublished")
            case "mute" | "unmute":
                answer = await self._emulator.set_muted(room, identity, track_sid, action == "mute")
                return self._said(answer, f"{action}d")
            case "unmute_microphone":
                return await self._unmute_microphone(room, identity)
        raise web.HTTPNotFound(
            text=json.dumps({"error": f"no client action {action!r}"}), content_type="application/json"
        )

    @staticmethod
    def _said(answer: ControlAnswer, success: str) -> tuple[bool, str]:
        if answer.ok:
            return True, success
        refused = "LiveKit refused" if answer.status in (401, 403) else "failed"
        return False, f"{refused}: {answer.error}"

    async def _connect(self, room: str, identity: str) -> tuple[bool, str]:
        """Connect with the token the service last handed this identity, or ask for fresh credentials
        as a client would (tokens live ``TOKEN_TTL_SECONDS``)."""
        token = self.traffic.token_for(room, identity)
        how = "with the token from its last join_success / credentials"
        if token is None:
            token = await self._fresh_token(room, identity)
            how = "with fresh credentials (create_new_access_token)"
        return self._said(await self._emulator.connect(token), f"connected {how}")

    async def _fresh_token(self, room: str, identity: str) -> str:
        try:
            state = await self._load_room(room)
        except StoreUnavailable as error:
            raise _bad_request(f"state store unavailable ({error})") from None
        entry = state.participants.get(identity)
        if entry is None:
            raise _bad_request(
                f"{identity} has no valid token and is not in the roster of {room}: send a join "
                "(popouts: request_popout_stream_access_token) first"
            )
        envelope = {
            "room": room, "participant": identity, "role": entry.role, "kind": entry.kind,
            "payload": {"action": "create_new_access_token"},
        }  # fmt: skip
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        message_id = ""
        try:
            command = await self._publish(room, envelope)
            message_id = command.message_id
            self._waiting[message_id] = answer
            # The answer may have come before the future was registered.
            for event in command.answers:
                if isinstance(event.body, dict) and not answer.done():
                    answer.set_result(event.body)
            body = await asyncio.wait_for(answer, CREDENTIALS_TIMEOUT_SECONDS)
        except TimeoutError:
            raise web.HTTPGatewayTimeout(
                text=json.dumps(
                    {"error": f"no credentials for {identity} in {CREDENTIALS_TIMEOUT_SECONDS:g} s"}
                ),
                content_type="application/json",
            ) from None
        finally:
            self._waiting.pop(message_id, None)
        token = body.get("payload", {}).get("token")
        if not isinstance(token, str):
            raise _bad_request(f"the service answered {body.get('payload')!r} instead of credentials")
        return token

    async def _unmute_microphone(self, room: str, identity: str) -> tuple[bool, str]:
        """What a LiveKit client's ``setMicrophoneEnabled(true)`` does: unmute the microphone track if
        there is one (LiveKit always lets a participant unmute itself), else publish a new one (which
        LiveKit refuses when the permission does not allow the microphone)."""
        participant = await self._livekit_participant(room, identity)
        if participant is None:
            return False, "not connected"
        microphone = next((t for t in participant["tracks"] if t["source"] == "microphone"), None)
        if microphone is None:
            answer = await self._emulator.publish(room, identity, "microphone")
            return self._said(answer, "no microphone track: published a new one")
        if not microphone["muted"]:
            return True, "the microphone is not muted"
        return self._said(await self._emulator.set_muted(room, identity, microphone["sid"], False), "unmuted")

    async def _livekit_participant(self, room: str, identity: str) -> dict[str, Any] | None:
        for livekit_room in await self._emulator.rooms():
            if livekit_room["name"] == room:
                for participant in livekit_room["participants"]:
                    if participant["identity"] == identity:
                        found: dict[str, Any] = participant
                        return found
        return None
