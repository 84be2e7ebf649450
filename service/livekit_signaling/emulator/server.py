"""aiohttp server speaking LiveKit's RoomService Twirp API, plus control routes and a webhook sender.

Request handling follows LiveKit's layering so failures look the same to the SDK:
1. the emulated fault (a broken server fails before anything else),
2. the API-key auth middleware (pkg/service/auth.go): a bad token is a 401 with a plain-text body,
3. Twirp routing and decoding (bad_route, malformed),
4. the per-method grant check (twirpAuthError: 401 JSON ``unauthenticated``, "permissions denied"),
5. the RoomService method itself.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import enum
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final, cast

import aiohttp
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from livekit.api import AccessToken
from livekit.protocol import room as room_pb
from livekit.protocol.models import ParticipantInfo, ParticipantPermission, Room, TrackInfo
from livekit.protocol.webhook import WebhookEvent

from .state import (
    NAME_BY_SOURCE,
    SOURCE_BY_NAME,
    EmulatorError,
    EmulatorState,
    kind_from_claim,
    new_sid,
    permission_from_grants,
)

log = logging.getLogger(__name__)

ROOM_SERVICE: Final = "livekit.RoomService"

# twirp.ServerHTTPStatusFromErrorCode, which LiveKit's Twirp server uses for every error it returns.
TWIRP_STATUS: Final[dict[str, int]] = {
    "canceled": 408,
    "unknown": 500,
    "invalid_argument": 400,
    "malformed": 400,
    "deadline_exceeded": 408,
    "not_found": 404,
    "bad_route": 404,
    "already_exists": 409,
    "permission_denied": 403,
    "unauthenticated": 401,
    "resource_exhausted": 429,
    "failed_precondition": 412,
    "aborted": 409,
    "out_of_range": 400,
    "unimplemented": 501,
    "internal": 500,
    "unavailable": 503,
    "dataloss": 500,
}

# auth.APIKeyTokenVerifier validates exp/nbf with a one-minute leeway.
TOKEN_LEEWAY_S: Final = 60.0
# LiveKit signs webhooks with a short-lived token (webhook.URLNotifier uses 5 minutes).
WEBHOOK_TOKEN_TTL: Final = timedelta(minutes=5)
WEBHOOK_TIMEOUT_S: Final = 5.0
# Like LiveKit's notifier queue, a receiver that cannot keep up loses events (counted in num_dropped)
# instead of growing memory without bound.
WEBHOOK_QUEUE_SIZE: Final = 10_000

#: Tokens whose signature was checked, remembered by verify_token (cleared when full).
_VERIFIED_TOKENS: Final = 1_000

_PROTOBUF: Final = "application/protobuf"
_JSON: Final = "application/json"


class EmulatorFault(enum.Enum):
    NONE = "none"  # normal service
    UNAVAILABLE = "unavailable"  # every Twirp call answers 503 Twirp `unavailable`
    HANG = "hang"  # Twirp calls are accepted and not answered while the fault lasts
    RESET = "reset"  # Twirp connections are closed without a response


class _AuthError(Exception):
    """Rejected by the auth middleware: answered with a plain-text 401."""


def _b64url_decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _twirp_error(code: str, msg: str) -> web.Response:
    return web.json_response({"code": code, "msg": msg}, status=TWIRP_STATUS.get(code, 500))


def _permission_denied() -> EmulatorError:
    return EmulatorError("unauthenticated", "permissions denied")


def _control_error(status: int, msg: str) -> web.Response:
    return web.json_response({"error": msg}, status=status)


def _participant_json(p: ParticipantInfo) -> dict[str, Any]:
    permission = p.permission
    return {
        "identity": p.identity,
        "sid": p.sid,
        "state": ParticipantInfo.State.Name(p.state),
        "kind": ParticipantInfo.Kind.Name(p.kind),
        "permission": {
            "can_publish": permission.can_publish,
            # LiveKit's own reading: an empty list means every source (when can_publish).
            "can_publish_sources": [
                NAME_BY_SOURCE.get(int(s), str(s)) for s in permission.can_publish_sources
            ],
            "can_subscribe": permission.can_subscribe,
            "can_publish_data": permission.can_publish_data,
            "hidden": permission.hidden,
        },
        "tracks": [
            {"sid": t.sid, "source": NAME_BY_SOURCE.get(int(t.source), str(t.source)), "muted": t.muted}
            for t in p.tracks
        ],
    }


GrantCheck = Callable[[dict[str, Any] | None, Any], bool]


def _grant_create(video: dict[str, Any] | None, _req: Any) -> bool:
    return bool(video and video.get("roomCreate"))


def _grant_list(video: dict[str, Any] | None, _req: Any) -> bool:
    return bool(video and video.get("roomList"))


def _grant_admin(video: dict[str, Any] | None, req: Any) -> bool:
    # EnsureAdminPermission: roomAdmin for exactly the room the request names.
    return bool(video and video.get("roomAdmin") and video.get("room", "") == req.room)


@dataclass(frozen=True, slots=True)
class _Method:
    request: type[Message]
    check: GrantCheck
    handler: Callable[[Any], Message | Awaitable[Message]]


class _WebhookSender:
    """Delivers webhook events one at a time, in order, from a background task.

    Emitting never blocks or awaits, so Twirp and control handlers stay fast; delivery failures are logged
    and the event is dropped, as LiveKit does after its retries.
    """

    def __init__(self, api_key: str, api_secret: str) -> None:
        self._api_key = api_key
        self._api_secret = api_secret
        self._queue: asyncio.Queue[tuple[str, WebhookEvent]] = asyncio.Queue(WEBHOOK_QUEUE_SIZE)
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._dropped = 0

    def start(self) -> None:
        if self._task is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT_S))
            self._task = asyncio.create_task(self._run(), name="livekit-emulator-webhooks")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()
            self._session = None
        if not self._queue.empty():
            log.debug("dropping %d undelivered webhook events on stop", self._queue.qsize())
        self._queue = asyncio.Queue(WEBHOOK_QUEUE_SIZE)

    def enqueue(self, url: str, event: WebhookEvent) -> None:
        if self._dropped:
            event.num_dropped = self._dropped
        try:
            self._queue.put_nowait((url, event))
        except asyncio.QueueFull:
            self._dropped += 1
            log.warning("webhook queue full, dropping %s event", event.event)
        else:
            self._dropped = 0

    def sign(self, body: bytes) -> str:
        digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
        return (
            AccessToken(self._api_key, self._api_secret)
            .with_sha256(digest)
            .with_ttl(WEBHOOK_TOKEN_TTL)
            .to_jwt()
        )

    async def _run(self) -> None:
        while True:
            url, event = await self._queue.get()
            try:
                await self._deliver(url, event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("webhook %s to %s failed: %r", event.event, url, exc)

    async def _deliver(self, url: str, event: WebhookEvent) -> None:
        assert self._session is not None
        body = json_format.MessageToJson(event, indent=None).encode()
        headers = {"Content-Type": "application/webhook+json", "Authorization": self.sign(body)}
        async with self._session.post(url, data=body, headers=headers) as resp:
            if resp.status >= 300:
                log.warning("webhook %s to %s answered HTTP %d", event.event, url, resp.status)
            else:
                log.debug("webhook %s delivered to %s", event.event, url)


class LiveKitEmulator:
    """A LiveKit server stand-in: RoomService over Twirp, simulated clients, faults and webhooks."""

    def __init__(
        self,
        api_key: str,
        api_secret: str,
        *,
        webhook_url: str | None = None,
        unknown_participant_mute_delay: float = 15.0,
    ) -> None:
        self.api_key = api_key
        self.api_secret = api_secret
        self._secret = api_secret.encode()
        self._verified_tokens: dict[str, dict[str, Any]] = {}
        self.webhook_url = webhook_url
        #: Off: events are dropped as webhooks LiveKit never delivered (the URL is kept).
        self.webhooks_enabled = True
        #: Seconds each call of a RoomService method waits before it is served, by method name.
        self.delays: dict[str, float] = {}
        self.unknown_participant_mute_delay = unknown_participant_mute_delay
        # Every Twirp request received, by method name, whatever its outcome (auth failure and faults
        # included), so tests can assert that nothing reached "LiveKit".
        self.calls: list[str] = []
        #: The room each of ``calls`` named in its request (None until it is read, or if it names none).
        self.call_rooms: list[str | None] = []
        #: The W3C ``traceparent`` header of each of those requests (None without), as LiveKit's own
        #: tracing would read it: tests check that the trace reaches LiveKit.
        self.traceparents: list[str | None] = []
        self.state = EmulatorState(self._on_event)
        self._fault = EmulatorFault.NONE
        # Replaced (after being set) whenever the fault changes or the server stops: hung handlers wait
        # on it and re-check, so they end as soon as the hang is lifted and never outlive the server.
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        self._webhooks = _WebhookSender(api_key, api_secret)
        self._methods: dict[str, _Method] = {
            "CreateRoom": _Method(room_pb.CreateRoomRequest, _grant_create, self._create_room),
            "ListRooms": _Method(room_pb.ListRoomsRequest, _grant_list, self._list_rooms),
            "DeleteRoom": _Method(room_pb.DeleteRoomRequest, _grant_create, self._delete_room),
            "ListParticipants": _Method(
                room_pb.ListParticipantsRequest, _grant_admin, self._list_participants
            ),
            "GetParticipant": _Method(room_pb.RoomParticipantIdentity, _grant_admin, self._get_participant),
            "RemoveParticipant": _Method(
                room_pb.RoomParticipantIdentity, _grant_admin, self._remove_participant
            ),
            "MutePublishedTrack": _Method(room_pb.MuteRoomTrackRequest, _grant_admin, self._mute),
            "UpdateParticipant": _Method(
                room_pb.UpdateParticipantRequest, _grant_admin, self.state.update_participant
            ),
            "UpdateSubscriptions": _Method(
                room_pb.UpdateSubscriptionsRequest, _grant_admin, self._update_subscriptions
            ),
            "SendData": _Method(room_pb.SendDataRequest, _grant_admin, self._send_data),
            "UpdateRoomMetadata": _Method(
                room_pb.UpdateRoomMetadataRequest, _grant_admin, self._update_room_metadata
            ),
        }

    # -- lifecycle ---------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("LiveKitEmulator is not started")
        return self._url

    @property
    def fault(self) -> EmulatorFault:
        return self._fault

    @fault.setter
    def fault(self, value: EmulatorFault) -> None:
        if value is not self._fault:
            log.info("emulated LiveKit fault: %s", value.value)
        self._fault = value
        self._wake_waiters()

    def _wake_waiters(self) -> None:
        self._wake.set()
        self._wake = asyncio.Event()

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/twirp/{service}/{method}", self._twirp)
        r = app.router
        r.add_post("/_emulator/connect", self._ctl_connect)
        r.add_post("/_emulator/publish", self._ctl_publish)
        r.add_post("/_emulator/unpublish", self._ctl_unpublish)
        r.add_post("/_emulator/mute", self._ctl_mute)
        r.add_post("/_emulator/disconnect", self._ctl_disconnect)
        r.add_post("/_emulator/fault", self._ctl_fault)
        r.add_get("/_emulator/calls", self._ctl_calls)
        r.add_post("/_emulator/calls/clear", self._ctl_calls_clear)
        r.add_post("/_emulator/webhook", self._ctl_webhook)
        r.add_post("/_emulator/forget", self._ctl_forget)
        r.add_post("/_emulator/delay", self._ctl_delay)
        r.add_post("/_emulator/participants/bulk", self._ctl_bulk)
        r.add_get("/_emulator/rooms", self._ctl_rooms)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        if self._runner is not None:
            raise RuntimeError("LiveKitEmulator already started")
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        # No access log: benchmarks push thousands of calls per second through here.
        runner = web.AppRunner(self.build_app(), access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound_host, bound_port = cast(tuple[str, int], runner.addresses[0][:2])
        url_host = f"[{bound_host}]" if ":" in bound_host else bound_host
        self._url = f"http://{url_host}:{bound_port}"
        self._webhooks.start()
        log.info("LiveKit emulator listening on %s", self._url)
        return self._url

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._stopping.set()
        self._wake_waiters()
        await self._webhooks.stop()
        await runner.cleanup()
        self._url = None
        log.info("LiveKit emulator stopped")

    async def __aenter__(self) -> LiveKitEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- simulated clients -------------------------------------------------------------------------

    def verify_token(self, token: str) -> dict[str, Any]:
        """auth.ParseAPIToken + APIKeyTokenVerifier.Verify; returns the claims or raises _AuthError.

        HS256 signed with our secret, `iss` our key, `exp` present and not past, `nbf` reached, both with
        LiveKit's one-minute leeway. Done by hand rather than with PyJWT, whose decode costs about ten
        times as much and would dominate the cost of every emulated call. A token whose signature was
        checked once is remembered (the service sends one room token with every call of a fan-out:
        parsing and checking it again was a tenth of the emulator's CPU, which shares the bench's cores);
        its times are checked on every use.
        """
        claims = self._verified_tokens.get(token)
        if claims is None:
            claims = self._verify_signature(token)
            if len(self._verified_tokens) >= _VERIFIED_TOKENS:
                self._verified_tokens.clear()
            self._verified_tokens[token] = claims
        now = time.time()
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if not isinstance(exp, int | float) or now > exp + TOKEN_LEEWAY_S:
            raise _AuthError("invalid token: token is expired (exp)")
        if nbf is not None and (not isinstance(nbf, int | float) or now < nbf - TOKEN_LEEWAY_S):
            raise _AuthError("invalid token: token is not valid yet (nbf)")
        return claims

    def _verify_signature(self, token: str) -> dict[str, Any]:
        try:
            header_b64, payload_b64, signature_b64 = token.split(".")
            header = json.loads(_b64url_decode(header_b64))
            claims = json.loads(_b64url_decode(payload_b64))
            signature = _b64url_decode(signature_b64)
        except (ValueError, binascii.Error):
            raise _AuthError("invalid authorization token") from None
        if not isinstance(header, dict) or not isinstance(claims, dict) or header.get("alg") != "HS256":
            raise _AuthError("invalid authorization token")
        if claims.get("iss") != self.api_key:
            raise _AuthError(f"invalid API key: {claims.get('iss')}")
        signed = f"{header_b64}.{payload_b64}".encode()
        if not hmac.compare_digest(hmac.new(self._secret, signed, hashlib.sha256).digest(), signature):
            raise _AuthError("invalid token: signature is invalid")
        return claims

    def connect(self, token: str) -> ParticipantInfo:
        """A client joins with a participant access token; raises PermissionError if LiveKit refuses it."""
        _room, p = self._join(token)
        result = ParticipantInfo()
        result.CopyFrom(p)
        return result

    def _join(self, token: str) -> tuple[str, ParticipantInfo]:
        try:
            claims = self.verify_token(token)
        except _AuthError as exc:
            raise PermissionError(str(exc)) from exc
        video = claims.get("video") or {}
        room = video.get("room", "")
        identity = claims.get("sub", "")
        # EnsureJoinPermission, plus the signal handler's checks for a room name and an identity.
        if not video.get("roomJoin"):
            raise PermissionError("permissions denied: token has no roomJoin grant")
        if not room:
            raise PermissionError("permissions denied: token names no room")
        if not identity:
            raise PermissionError("identity cannot be empty")
        p = self.state.join(
            room,
            identity,
            name=claims.get("name", ""),
            permission=permission_from_grants(video),
            kind=kind_from_claim(claims.get("kind", "")),
            metadata=claims.get("metadata", ""),
            attributes=claims.get("attributes"),
        )
        return room, p

    def publish(self, room: str, identity: str, source: str, *, muted: bool = False) -> str:
        """Publish a track; PermissionError if not allowed, LookupError if the participant is unknown."""
        return self.state.publish(room, identity, source, muted=muted).sid

    def set_track_muted(self, room: str, identity: str, track_sid: str, muted: bool) -> None:
        self.state.set_track_muted(room, identity, track_sid, muted)

    def unpublish(self, room: str, identity: str, track_sid: str) -> None:
        """The client unpublishes its own track; LookupError if it has no such track."""
        self.state.unpublish(room, identity, track_sid)

    def snapshot(self, rooms: Iterable[str] = ()) -> list[dict[str, Any]]:
        """Rooms, participants, tracks and permissions as plain JSON values, for people to read
        (the dev console); programs use the Twirp API."""
        return [
            {
                "name": info.name,
                "sid": info.sid,
                "participants": [_participant_json(p) for p in self.state.list_participants(info.name)],
            }
            for info in self.state.list_rooms(rooms)
        ]

    def disconnect(self, room: str, identity: str) -> None:
        self.state.leave(room, identity)

    def add_participants(
        self,
        room: str,
        count: int,
        prefix: str,
        sources: Iterable[str] = (),
        can_publish_sources: Iterable[str] = (),
    ) -> list[str]:
        """Connect `count` participants `<prefix><i>`, each publishing one unmuted track per source."""
        wanted = list(sources)
        allowed = list(can_publish_sources)
        for s in (*wanted, *allowed):
            if s not in SOURCE_BY_NAME:
                raise ValueError(f"unknown track source {s!r}")
        permission = ParticipantPermission(
            can_publish=True,
            can_subscribe=True,
            can_publish_data=True,
            can_publish_sources=[SOURCE_BY_NAME[s] for s in allowed],
        )
        identities = [f"{prefix}{i}" for i in range(count)]
        for identity in identities:
            self.state.join(room, identity, name=identity, permission=permission)
            for s in wanted:
                self.state.publish(room, identity, s)
        return identities

    # -- webhooks ----------------------------------------------------------------------------------

    def _on_event(
        self, event: str, room: Room, participant: ParticipantInfo | None, track: TrackInfo | None
    ) -> None:
        url = self.webhook_url
        if url is None or not self.webhooks_enabled:
            return
        # Snapshot now: the state objects keep changing after this call returns.
        msg = WebhookEvent(event=event, id=new_sid("EV_"), created_at=int(time.time()))
        msg.room.CopyFrom(room)
        if participant is not None:
            msg.participant.CopyFrom(participant)
        if track is not None:
            msg.track.CopyFrom(track)
        self._webhooks.enqueue(url, msg)

    # -- Twirp -------------------------------------------------------------------------------------

    async def _twirp(self, request: web.Request) -> web.StreamResponse:
        method_name = request.match_info["method"]
        call = len(self.calls)
        self.calls.append(method_name)
        self.call_rooms.append(None)
        self.traceparents.append(request.headers.get("traceparent"))
        if self._fault is not EmulatorFault.NONE:
            faulted = await self._apply_fault(request)
            if faulted is not None:
                return faulted
        delay = self.delays.get(method_name)
        if delay:
            await asyncio.sleep(delay)
        try:
            video = self._authenticate(request)
        except _AuthError as exc:
            return web.Response(status=401, text=str(exc))
        try:
            return await self._serve(request, method_name, video, call)
        except EmulatorError as exc:
            log.debug("%s -> %s: %s", method_name, exc.code, exc.msg)
            return _twirp_error(exc.code, exc.msg)

    async def _serve(
        self, request: web.Request, method_name: str, video: dict[str, Any] | None, call: int
    ) -> web.Response:
        method = self._methods.get(method_name)
        if request.match_info["service"] != ROOM_SERVICE or method is None:
            raise EmulatorError("bad_route", f"no handler for path {request.path!r}")
        if request.method != "POST":
            raise EmulatorError("bad_route", f"unsupported method {request.method!r} (only POST is allowed)")
        content_type = request.content_type
        if content_type not in (_PROTOBUF, _JSON):
            raise EmulatorError("bad_route", f"unexpected Content-Type: {content_type!r}")
        body = await request.read()
        req = method.request()
        try:
            if content_type == _PROTOBUF:
                req.ParseFromString(body)
            else:
                json_format.Parse(body or b"{}", req, ignore_unknown_fields=True)
        except (DecodeError, json_format.ParseError) as exc:
            kind = "protobuf" if content_type == _PROTOBUF else "json"
            raise EmulatorError("malformed", f"the {kind} request could not be decoded: {exc}") from None
        if call < len(self.call_rooms):  # the log may have been cleared meanwhile
            named = req.name if isinstance(req, room_pb.CreateRoomRequest) else getattr(req, "room", "")
            self.call_rooms[call] = named or None
        if not method.check(video, req):
            raise _permission_denied()
        outcome = method.handler(req)
        result = outcome if isinstance(outcome, Message) else await outcome
        if content_type == _PROTOBUF:
            return web.Response(body=result.SerializeToString(), content_type=_PROTOBUF)
        return web.Response(
            text=json_format.MessageToJson(result, preserving_proto_field_name=True, indent=None),
            content_type=_JSON,
        )

    async def _apply_fault(self, request: web.Request) -> web.StreamResponse | None:
        """Answer for the current fault, or None to serve the request normally."""
        while self._fault is EmulatorFault.HANG and not self._stopping.is_set():
            await self._wake.wait()
        if self._stopping.is_set():
            # The server is going away under a hung request: drop it like a dying process would.
            return self._reset(request)
        if self._fault is EmulatorFault.UNAVAILABLE:
            return _twirp_error("unavailable", "service unavailable (emulated fault)")
        if self._fault is EmulatorFault.RESET:
            return self._reset(request)
        return None

    @staticmethod
    def _reset(request: web.Request) -> web.StreamResponse:
        if request.transport is not None:
            request.transport.abort()
        # aiohttp discards a response for an aborted transport; returning one ends the handler cleanly.
        return web.Response(status=503)

    def _authenticate(self, request: web.Request) -> dict[str, Any] | None:
        """The auth middleware: no header means no grants (refused later by the grant check)."""
        header = request.headers.get("Authorization")
        if header is None:
            token = request.query.get("access_token", "")
        elif header.startswith("Bearer "):
            token = header[7:]
        else:
            raise _AuthError("invalid authorization header. Must start with Bearer ")
        if not token:
            return None
        claims = self.verify_token(token)
        video = claims.get("video")
        return video if isinstance(video, dict) else None

    # RoomService methods. They run synchronously between awaits, so each one sees and leaves a
    # consistent state without locks.

    def _create_room(self, req: room_pb.CreateRoomRequest) -> Room:
        if not req.name:
            raise EmulatorError("invalid_argument", "no room name")
        return self.state.create_room(req)

    def _list_rooms(self, req: room_pb.ListRoomsRequest) -> room_pb.ListRoomsResponse:
        return room_pb.ListRoomsResponse(rooms=self.state.list_rooms(req.names))

    def _delete_room(self, req: room_pb.DeleteRoomRequest) -> room_pb.DeleteRoomResponse:
        self.state.delete_room(req.room)
        return room_pb.DeleteRoomResponse()

    def _list_participants(self, req: room_pb.ListParticipantsRequest) -> room_pb.ListParticipantsResponse:
        return room_pb.ListParticipantsResponse(participants=self.state.list_participants(req.room))

    def _get_participant(self, req: room_pb.RoomParticipantIdentity) -> ParticipantInfo:
        return self.state.participant(req.room, req.identity)

    def _remove_participant(self, req: room_pb.RoomParticipantIdentity) -> room_pb.RemoveParticipantResponse:
        self.state.remove_participant(req.room, req.identity)
        return room_pb.RemoveParticipantResponse()

    async def _mute(self, req: room_pb.MuteRoomTrackRequest) -> room_pb.MuteRoomTrackResponse:
        if self.state.find_participant(req.room, req.identity) is None:
            # LiveKit does not look the participant up: the request waits for an RPC nobody answers.
            try:
                await asyncio.wait_for(self._stopping.wait(), self.unknown_participant_mute_delay)
            except TimeoutError:
                raise EmulatorError("deadline_exceeded", "request timed out") from None
            raise EmulatorError("unavailable", "server is shutting down")
        track = self.state.mute_track(req.room, req.identity, req.track_sid, req.muted)
        return room_pb.MuteRoomTrackResponse(track=track)

    def _update_subscriptions(
        self, req: room_pb.UpdateSubscriptionsRequest
    ) -> room_pb.UpdateSubscriptionsResponse:
        # Subscriptions are not modelled; the call is accepted for a connected participant.
        self.state.participant(req.room, req.identity)
        return room_pb.UpdateSubscriptionsResponse()

    def _send_data(self, req: room_pb.SendDataRequest) -> room_pb.SendDataResponse:
        # Data packets go nowhere: there are no real clients to receive them.
        return room_pb.SendDataResponse()

    def _update_room_metadata(self, req: room_pb.UpdateRoomMetadataRequest) -> Room:
        return self.state.update_room_metadata(req.room, req.metadata)

    # -- control routes ----------------------------------------------------------------------------

    @staticmethod
    async def _json(request: web.Request) -> dict[str, Any]:
        try:
            data = await request.json()
        except ValueError as exc:
            error = json.dumps({"error": f"invalid JSON: {exc}"})
            raise web.HTTPBadRequest(text=error, content_type=_JSON) from None
        if not isinstance(data, dict):
            raise web.HTTPBadRequest(text=json.dumps({"error": "expected a JSON object"}), content_type=_JSON)
        return data

    async def _ctl_connect(self, request: web.Request) -> web.Response:
        data = await self._json(request)
        try:
            room, p = self._join(str(data.get("token", "")))
        except PermissionError as exc:
            return _control_error(401, str(exc))
        return web.json_response({"identity": p.identity, "room": room, "sid": p.sid})

    async def _ctl_publish(self, request: web.Request) -> web.Response:
        data = await self._json(request)
        try:
            sid = self.publish(
                str(data.get("room", "")),
                str(data.get("identity", "")),
                str(data.get("source", "")),
                muted=bool(data.get("muted", False)),
            )
        except PermissionError as exc:
            return _control_error(403, str(exc))
        except LookupError as exc:
            return _control_error(404, str(exc))
        except ValueError as exc:
            return _control_error(400, str(exc))
        return web.json_response({"sid": sid})

    async def _ctl_unpublish(self, request: web.Request) -> web.Response:
        data = await self._json(request)
        try:
            self.unpublish(
                str(data.get("room", "")), str(data.get("identity", "")), str(data.get("track_sid", ""))
            )
        except LookupError as exc:
            return _control_error(404, str(exc))
        return web.json_response({})

    async def _ctl_rooms(self, request: web.Request) -> web.Response:
        return web.json_response({"rooms": self.snapshot(request.query.getall("room", []))})

    async def _ctl_mute(self, request: web.Request) -> web.Response:
        data = await self._json(request)
        try:
            self.set_track_muted(
                str(data.get("room", "")),
                str(data.get("identity", "")),
                str(data.get("track_sid", "")),
                bool(data.get("muted", True)),
            )
        except LookupError as exc:
            return _control_error(404, str(exc))
        return web.json_response({})

    async def _ctl_disconnect(self, request: web.Request) -> web.Response:
        data = await self._json(request)
        self.disconnect(str(data.get("room", "")), str(data.get("identity", "")))
        return web.json_response({})

    async def _ctl_fault(self, request: web.Request) -> web.Response:
        data = await self._json(request)
        try:
            self.fault = EmulatorFault(data.get("mode"))
        except ValueError:
            return _control_error(400, f"unknown fault mode {data.get('mode')!r}")
        return web.json_response({"mode": self.fault.value})

    async def _ctl_calls(self, _request: web.Request) -> web.Response:
        return web.json_response(
            {"calls": self.calls, "rooms": self.call_rooms, "traceparents": self.traceparents}
        )

    async def _ctl_calls_clear(self, _request: web.Request) -> web.Response:
        self.calls.clear()
        self.call_rooms.clear()
        self.traceparents.clear()
        return web.json_response({})

    async def _ctl_webhook(self, request: web.Request) -> web.Response:
        """``url`` (a string, or null for none) where webhooks go, and/or ``enabled``: whether they are
        sent at all (off, they are lost as LiveKit's undelivered webhooks are)."""
        data = await self._json(request)
        if "url" in data:
            url = data["url"]
            if url is not None and not isinstance(url, str):
                return _control_error(400, "url must be a string or null")
            self.webhook_url = url or None
        if "enabled" in data:
            if not isinstance(data["enabled"], bool):
                return _control_error(400, "enabled must be true or false")
            self.webhooks_enabled = data["enabled"]
        return web.json_response({"url": self.webhook_url, "enabled": self.webhooks_enabled})

    async def _ctl_forget(self, request: web.Request) -> web.Response:
        """LiveKit restarted and lost the room (``EmulatorState.forget_room``); its clients may connect
        again with the tokens they hold."""
        data = await self._json(request)
        return web.json_response({"identities": self.state.forget_room(str(data.get("room", "")))})

    async def _ctl_delay(self, request: web.Request) -> web.Response:
        """Every call of ``method`` waits ``seconds`` before it is served (0 for none): a slow LiveKit,
        and a way to hold a call in flight."""
        data = await self._json(request)
        method, seconds = data.get("method"), data.get("seconds", 0)
        if method not in self._methods:
            return _control_error(400, f"unknown RoomService method {method!r}")
        if not isinstance(seconds, int | float) or seconds < 0:
            return _control_error(400, "seconds must be a number, 0 or more")
        if seconds:
            self.delays[method] = float(seconds)
        else:
            self.delays.pop(method, None)
        return web.json_response({"delays": self.delays})

    async def _ctl_bulk(self, request: web.Request) -> web.Response:
        data = await self._json(request)
        try:
            identities = self.add_participants(
                str(data["room"]),
                int(data.get("count", 0)),
                str(data.get("prefix", "p")),
                [str(s) for s in data.get("sources") or ()],
                [str(s) for s in data.get("can_publish_sources") or ()],
            )
        except (KeyError, ValueError, TypeError) as exc:
            return _control_error(400, f"bad bulk request: {exc!r}")
        return web.json_response({"identities": identities})
