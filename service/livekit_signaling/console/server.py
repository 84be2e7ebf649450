"""The dev console: a page that shows both sides of the signaling at once, and its JSON and SSE endpoints.

Mounted by ``livekit-signaling dev`` only (the page shows access tokens and sends commands as anyone), on
the service's HTTP port:

- ``GET /``: the page; ``GET /console/<file>``: its script and style sheet.
- ``GET /console/snapshot``: rooms, sent commands and events as JSON.
- ``GET /console/stream``: the same, live, as server-sent events: ``reset`` (everything, on connect),
  then ``event``, ``command`` (a sent command, again whenever an answer arrives) and ``rooms``.
- ``POST /console/commands``: publish an envelope to the command exchange as a controller does.
- ``POST /console/clients/<action>``: act as a participant's LiveKit client on the emulator.
- ``POST /console/livekit/<action>``: act on the emulated LiveKit itself: ``forget`` a room as a restart
  does, switch its ``webhooks`` on or off (off, only the service's reconciliation repairs drift).

Everything it needs is injected: the room state (a read function), the reconciler's latest repairs
(another), the publish policy, RabbitMQ (URL and exchange names), the emulator (its URL) and the
service's kept traces; it imports nothing from ``livekit_signaling.app``. This module wires the parts
and speaks HTTP; what each part does is in its own module.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import uuid
from collections.abc import Awaitable, Sequence
from urllib.parse import urlsplit

import aiohttp
import msgspec
from aiohttp import web

from livekit_signaling.client import SignalingClient, UndecodableEvent
from livekit_signaling.console.clients import SimulatedClients, said
from livekit_signaling.console.controller import CommandTraces, Controller
from livekit_signaling.console.room_watch import POLL_SECONDS, RoomWatch
from livekit_signaling.console.rooms import LoadRoom, RecentRepairsOf
from livekit_signaling.console.stream import LiveStream
from livekit_signaling.console.traffic import Traffic
from livekit_signaling.console.views import (
    ClientOutcome,
    ClientRequest,
    ErrorAnswer,
    LiveKitRequest,
    Refused,
    SentCommand,
    Snapshot,
    to_json,
)
from livekit_signaling.domain.permissions import PublishPolicy
from livekit_signaling.emulator.control import EmulatorControl
from livekit_signaling.schemas import codec

#: Files of ``static/`` the page loads, with their content types (nothing else is served from there).
STATIC_FILES = {
    "index.html": "text/html",
    "console.css": "text/css",
    "console.js": "text/javascript",
}

_client_request_decoder = msgspec.json.Decoder(ClientRequest)
_livekit_request_decoder = msgspec.json.Decoder(LiveKitRequest)


def _json(value: object, *, status: int = 200) -> web.Response:
    return web.Response(body=to_json(value), status=status, content_type="application/json")


async def _answer(work: Awaitable[object]) -> web.Response:
    """``work``'s result as JSON, or the reason it was refused."""
    try:
        return _json(await work)
    except Refused as refused:
        return _json(ErrorAnswer(refused.reason), status=refused.status)


async def _same_origin_json(request: web.Request) -> bytes:
    """The request's body. Only same-origin JSON is taken: a page of another site can post a form to
    this port (the browser does not ask first), but not JSON, and it sends its Origin."""
    origin = request.headers.get("Origin")
    if origin is not None and urlsplit(origin).netloc != request.host:
        raise Refused(403, "cross-origin request")
    if request.content_type != "application/json":
        raise Refused(415, "expected application/json")
    return await request.read()


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
        policy: PublishPolicy | None = None,
        disconnect_unknown: bool = True,
        recent_repairs: RecentRepairsOf = lambda _room: (),
        traces: CommandTraces | None = None,
    ) -> None:
        """``traces``: the service's kept traces; each sent command then shows its trace's waterfall."""
        traffic = Traffic()
        self._emulator = EmulatorControl(emulator_url)
        self._stream = LiveStream()
        self._rooms = RoomWatch(
            load_room=load_room,
            emulator=self._emulator,
            traffic=traffic,
            stream=self._stream,
            poll_seconds=poll_seconds,
            policy=policy,
            disconnect_unknown=disconnect_unknown,
            recent_repairs=recent_repairs,
        )

        def show_undecodable(event: UndecodableEvent) -> None:
            # The controller is made after the client it drives; a body that is not an event is shown
            # as text.
            self._controller.on_undecodable(event)

        link = SignalingClient(
            amqp_urls,
            command_exchange=command_exchange,
            event_exchange=event_exchange,
            connection_name=f"livekit-signaling-console-{uuid.uuid4().hex[:6]}",
            on_undecodable=show_undecodable,
        )
        self._controller = Controller(
            link, traffic=traffic, stream=self._stream, on_room=self._rooms.notice, traces=traces
        )
        self._clients = SimulatedClients(
            emulator=self._emulator, load_room=load_room, traffic=traffic, controller=self._controller
        )
        self._traffic = traffic
        self._tasks: list[asyncio.Task[None]] = []

    def install(self, app: web.Application) -> None:
        """Add the console's routes to ``app`` and tie its background work to the app's lifecycle."""
        app.router.add_get("/", self._page)
        app.router.add_get("/console/snapshot", self._snapshot)
        app.router.add_get("/console/stream", self._live)
        app.router.add_post("/console/commands", self._send_command)
        app.router.add_post("/console/clients/{action}", self._client_action)
        app.router.add_post("/console/livekit/{action}", self._livekit_action)
        app.router.add_get("/console/{name}", self._static_file)
        app.on_startup.append(self._start)
        # on_shutdown runs before aiohttp waits for open requests: the streams must end there, or
        # shutdown would wait for them.
        app.on_shutdown.append(self._end_streams)
        app.on_cleanup.append(self._stop)

    async def _start(self, _app: web.Application) -> None:
        self._tasks = [
            asyncio.create_task(self._controller.run(), name="console-amqp"),
            asyncio.create_task(self._rooms.run(), name="console-rooms"),
        ]

    async def _end_streams(self, _app: web.Application) -> None:
        self._stream.end()

    async def _stop(self, _app: web.Application) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._controller.close()
        await self._emulator.close()

    async def _everything(self) -> Snapshot:
        rooms = await self._rooms.read()
        return Snapshot(
            rooms=rooms.rooms,
            livekit_error=rooms.livekit_error,
            webhooks=rooms.webhooks,
            amqp_connected=self._controller.is_connected,
            commands=list(self._traffic.commands.values()),
            events=list(self._traffic.events),
        )

    # -- the page and what it reads -----------------------------------------------------------------

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
        return _json(await self._everything())

    async def _live(self, request: web.Request) -> web.StreamResponse:
        return await self._stream.serve(request, self._everything)

    # -- what the page does -------------------------------------------------------------------------

    async def _send_command(self, request: web.Request) -> web.Response:
        return await _answer(self._publish(request))

    async def _publish(self, request: web.Request) -> SentCommand:
        # The deliberate exception to "typed past the codec": the form sends any JSON object, even an
        # invalid envelope, so that a developer sees it dead-lettered. It is published as the bytes that
        # came; only its room is read (leniently, by the codec) for the routing key.
        body = await _same_origin_json(request)
        try:
            room = codec.envelope_room(body)
        except codec.MalformedEnvelope as error:
            raise Refused(400, f"cannot route it: {error} (commands are routed by room.<room>)") from None
        return await self._controller.publish(room, body)

    async def _client_action(self, request: web.Request) -> web.Response:
        return await _answer(self._act(request))

    async def _act(self, request: web.Request) -> ClientOutcome:
        try:
            client = _client_request_decoder.decode(await _same_origin_json(request))
        except msgspec.DecodeError as error:
            raise Refused(400, f"not a client request: {error}") from None
        outcome = await self._clients.act(request.match_info["action"], client)
        self._rooms.note_outcome(client.room, client.participant, outcome.outcome)
        return outcome

    async def _livekit_action(self, request: web.Request) -> web.Response:
        return await _answer(self._act_on_livekit(request))

    async def _act_on_livekit(self, request: web.Request) -> ClientOutcome:
        try:
            asked = _livekit_request_decoder.decode(await _same_origin_json(request))
        except msgspec.DecodeError as error:
            raise Refused(400, f"not a LiveKit request: {error}") from None
        try:
            match request.match_info["action"]:
                case "forget":
                    answer = await self._emulator.forget(asked.room)
                    outcome = said(answer, f"LiveKit restarted and lost {asked.room}")
                case "webhooks":
                    answer = await self._emulator.set_webhooks(enabled=asked.enabled)
                    outcome = said(answer, f"webhooks {'on' if asked.enabled else 'off'}")
                    if outcome.ok:
                        self._rooms.webhooks = asked.enabled
                case other:
                    raise Refused(404, f"no LiveKit action {other!r}")
        except (aiohttp.ClientError, TimeoutError) as error:
            raise Refused(502, f"the emulated LiveKit did not answer ({type(error).__name__})") from None
        self._rooms.notice(asked.room)
        return outcome
