"""LiveKit's RoomService through the unmodified ``livekit-api`` client, with bounded, retried calls.

``livekit-api`` passes ``timeout=None`` per request (no timeout at all) and retries only for LiveKit Cloud
hosts, so every attempt is bounded here, transient failures (transport errors, timeouts, 5xx) are retried
with exponential backoff and jitter, 4xx never, and all of it ends by the command's deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

import aiohttp
from livekit.api import AccessToken, LiveKitAPI, ServerError, VideoGrants
from livekit.api.room_service import RoomService
from livekit.protocol.models import ParticipantInfo, ParticipantPermission, TrackSource
from livekit.protocol.room import (
    CreateRoomRequest,
    DeleteRoomRequest,
    ListParticipantsRequest,
    MuteRoomTrackRequest,
    RoomParticipantIdentity,
    UpdateParticipantRequest,
)
from prometheus_client import Counter, Histogram
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_any,
    wait_exponential_jitter,
)
from tenacity.stop import stop_base

from livekit_signaling.domain.deadline import seconds_left
from livekit_signaling.domain.errors import LiveKitRejected, LiveKitUnavailable
from livekit_signaling.domain.permissions import ALL_SOURCES
from livekit_signaling.domain.ports import ConnectedParticipant
from livekit_signaling.telemetry.tracing import NO_TRACING, Tracing

log = logging.getLogger(__name__)

T = TypeVar("T")

_SOURCE_BY_NAME = {
    "camera": TrackSource.CAMERA,
    "microphone": TrackSource.MICROPHONE,
    "screen_share": TrackSource.SCREEN_SHARE,
    "screen_share_audio": TrackSource.SCREEN_SHARE_AUDIO,
}
_NAME_BY_SOURCE = {value: name for name, value in _SOURCE_BY_NAME.items()}


#: Bound on the room caches: memory stays flat however many rooms pass through.
_MAX_KNOWN_ROOMS = 100_000
_ROOM_TOKEN_TTL = datetime.timedelta(minutes=10)
#: Back-off between attempts of a LiveKit call: 50 ms, doubling, at most 1 s, plus up to 100 ms jitter.
_FIRST_BACKOFF = 0.05
_MAX_BACKOFF = 1.0
_JITTER = 0.1


class _OutOfTime(stop_base):
    """Stop retrying when the next back-off would reach past the command's deadline."""

    def __init__(self, default_budget: float) -> None:
        self._default_budget = default_budget

    def __call__(self, retry_state: RetryCallState) -> bool:
        return seconds_left(self._default_budget) - (retry_state.upcoming_sleep or 0.0) <= 0


class _NotFound(Exception):
    """LiveKit answered not_found; each method decides whether that is fine."""


def _is_transient(error: BaseException) -> bool:
    if isinstance(error, ServerError):
        return error.status >= 500
    return isinstance(error, aiohttp.ClientError | TimeoutError)


def _attempt_outcome(error: BaseException | None) -> str:
    if error is None:
        return "ok"
    if isinstance(error, ServerError):
        if error.status == 404 or error.code == "not_found":
            return "not_found"
        return "unavailable" if error.status >= 500 else "rejected"
    if isinstance(error, TimeoutError):
        return "timeout"
    return "transport_error"


def publish_sources_of(permission: ParticipantPermission) -> frozenset[str]:
    """What a LiveKit permission lets a participant publish (an empty source list means all)."""
    if not permission.can_publish:
        return frozenset()
    if not permission.can_publish_sources:
        return ALL_SOURCES
    return frozenset(_NAME_BY_SOURCE[s] for s in permission.can_publish_sources if s in _NAME_BY_SOURCE)


class _CompactViews:
    """Turns ``ParticipantInfo`` into ``ConnectedParticipant`` that keep nothing of the response: the
    permission is kept as its encoded bytes (a view holding the protobuf sub-message would keep the
    whole response's memory alive), and the few distinct permissions and source sets of a room are
    shared by every participant that has them. ListParticipants has no paging, so this is what bounds
    the memory a room of 10,000 costs while it is checked (``bench.reconcile`` measures it)."""

    __slots__ = ("_by_permission",)

    def __init__(self) -> None:
        self._by_permission: dict[bytes, tuple[bytes, frozenset[str]]] = {}

    def view(self, info: ParticipantInfo) -> ConnectedParticipant:
        # ParticipantPermission has no map fields, so its encoding is the same every time without the
        # (five times dearer) deterministic mode.
        encoded = info.permission.SerializeToString()
        shared = self._by_permission.get(encoded)
        if shared is None:
            shared = self._by_permission[encoded] = (encoded, publish_sources_of(info.permission))
        return ConnectedParticipant(
            identity=info.identity,
            publish_sources=shared[1],
            unmuted_microphone_tracks=tuple(
                track.sid
                for track in info.tracks
                if track.source == TrackSource.MICROPHONE and not track.muted
            )
            if info.tracks
            else (),
            permission=shared[0],
            kind=_KIND_NAMES.get(info.kind, "standard"),
        )


#: LiveKit's participant kinds by number, lower case (``ParticipantInfo.Kind``).
_KIND_NAMES = {number: name.lower() for name, number in ParticipantInfo.Kind.items()}


def connected_participant(info: ParticipantInfo) -> ConnectedParticipant:
    return _CompactViews().view(info)


def permission_of(participant: ConnectedParticipant) -> ParticipantPermission:
    """A fresh copy of the permission LiveKit holds for the participant (as the adapter listed it)."""
    permission = ParticipantPermission()
    if isinstance(participant.permission, bytes):
        permission.ParseFromString(participant.permission)
    elif isinstance(participant.permission, ParticipantPermission):
        permission.CopyFrom(participant.permission)
    return permission


class LiveKitMetrics(Protocol):
    """What the adapter counts; ``livekit_signaling.telemetry.metrics.Metrics`` has these."""

    @property
    def livekit_requests(self) -> Counter: ...

    @property
    def livekit_request_duration(self) -> Histogram: ...

    @property
    def livekit_retries(self) -> Counter: ...


class LiveKitAdapter:
    """Implements the domain's ``LiveKit`` port. Create and close inside the running event loop."""

    def __init__(
        self,
        *,
        url: str,
        api_key: str,
        api_secret: str,
        request_timeout_seconds: float,
        attempts: int,
        max_concurrent_requests: int,
        metrics: LiveKitMetrics,
        room_cache_seconds: float = 0.0,
        tracing: Tracing = NO_TRACING,
        trace_configs: Sequence[aiohttp.TraceConfig] = (),
    ) -> None:
        """``trace_configs`` go on the HTTP session livekit-api uses (the client spans of LiveKit calls
        and the trace context they carry); ``tracing`` gets the retries and the latency exemplars."""
        self._url = url
        self._api_key = api_key
        self._api_secret = api_secret
        self._request_timeout = request_timeout_seconds
        self._attempts = attempts
        self._metrics = metrics
        self._tracing = tracing
        self._trace_configs = list(trace_configs)
        self._concurrency = asyncio.Semaphore(max_concurrent_requests)
        self._max_concurrent_requests = max_concurrent_requests
        self._series: dict[tuple[str, str], tuple[Counter, Histogram]] = {}
        self._api: LiveKitAPI | None = None
        self._session: aiohttp.ClientSession | None = None
        self._room_apis: OrderedDict[str, tuple[float, RoomService]] = OrderedDict()
        #: Rooms created (or found) recently, with when that stops being trusted; see ensure_room.
        self._room_cache_seconds = room_cache_seconds
        self._known_rooms: OrderedDict[str, float] = OrderedDict()

    async def start(self) -> None:
        # One keep-alive session for every call; the pool is as large as the concurrency bound.
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
        self._session = aiohttp.ClientSession(connector=connector, trace_configs=self._trace_configs or None)
        self._api = LiveKitAPI(self._url, self._api_key, self._api_secret, session=self._session)

    async def close(self) -> None:
        if self._api is not None:
            await self._api.aclose()  # leaves our injected session alone
            self._api = None
        self._room_apis.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _room_api(self, room: str) -> RoomService:
        """A RoomService client holding a pre-signed token with exactly the grant livekit-api would sign
        for every participant call of this room (``roomAdmin`` + ``room``), through livekit-api's own
        token mode: a fan-out to a thousand participants then signs once instead of a thousand times.
        Tokens live ``_ROOM_TOKEN_TTL`` and are replaced at half of it."""
        now = time.monotonic()
        cached = self._room_apis.get(room)
        if cached is not None and cached[0] > now:
            return cached[1]
        token = (
            AccessToken(self._api_key, self._api_secret)
            .with_grants(VideoGrants(room_admin=True, room=room))
            .with_ttl(_ROOM_TOKEN_TTL)
            .to_jwt()
        )
        service = LiveKitAPI(self._url, token=token, session=self._session).room
        self._room_apis[room] = (now + _ROOM_TOKEN_TTL.total_seconds() / 2, service)
        self._room_apis.move_to_end(room)
        while len(self._room_apis) > _MAX_KNOWN_ROOMS:
            self._room_apis.popitem(last=False)
        return service

    @property
    def _room(self) -> LiveKitAPI:
        if self._api is None:
            raise RuntimeError("LiveKitAdapter.start() was not awaited")
        return self._api

    async def _call(self, method: str, request: Callable[[], Awaitable[T]]) -> T:
        """One LiveKit call: bounded attempts, retried while transient and while time is left."""
        try:
            return await self._attempts_of(method, request)
        except ServerError as error:
            if error.status == 404 or error.code == "not_found":
                raise _NotFound(method) from None
            if error.status >= 500:
                raise LiveKitUnavailable(f"{method}: HTTP {error.status}") from None
            raise LiveKitRejected(error.code, error.status) from None
        except (aiohttp.ClientError, TimeoutError) as error:
            raise LiveKitUnavailable(f"{method}: {type(error).__name__}") from None

    async def _attempts_of(self, method: str, request: Callable[[], Awaitable[T]]) -> T:
        """The first attempt runs without retry machinery: building tenacity's objects and iterating
        them costs 35 µs, and a restriction in a room of 1,000 makes 1,000 calls. After a
        transient failure the remaining attempts run under tenacity with the back-off the first would
        have started: ``_FIRST_BACKOFF`` (+ jitter), then doubling up to ``_MAX_BACKOFF``."""
        try:
            return await self._attempt(method, request)
        except Exception as error:
            first_wait = _FIRST_BACKOFF + random.uniform(0, _JITTER)
            if (
                not _is_transient(error)
                or self._attempts < 2
                or seconds_left(self._request_timeout) - first_wait <= 0
            ):
                raise
            first_failure = error

        def count_retry(failure: BaseException | None) -> None:
            self._metrics.livekit_retries.labels(method).inc()
            self._tracing.retried(method, type(failure).__name__)

        count_retry(first_failure)
        await asyncio.sleep(first_wait)
        retrying = AsyncRetrying(
            stop=stop_any(stop_after_attempt(self._attempts - 1), _OutOfTime(self._request_timeout)),
            # Attempt n of this loop is attempt n + 1 of the call: its back-off is twice the first's.
            wait=wait_exponential_jitter(multiplier=2 * _FIRST_BACKOFF, max=_MAX_BACKOFF, jitter=_JITTER),
            retry=retry_if_exception(_is_transient),
            before_sleep=lambda state: count_retry(state.outcome.exception() if state.outcome else None),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._attempt(method, request)
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def _attempt(self, method: str, request: Callable[[], Awaitable[T]]) -> T:
        budget = min(self._request_timeout, seconds_left(self._request_timeout))
        if budget <= 0:
            raise TimeoutError("command deadline passed")
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            async with self._concurrency, asyncio.timeout(budget):
                return await request()
        except BaseException as caught:
            error = caught
            raise
        finally:
            if not isinstance(error, asyncio.CancelledError):
                self._observe(method, _attempt_outcome(error), time.perf_counter() - started)

    def _observe(self, method: str, outcome: str, seconds: float) -> None:
        """Count an attempt; the labelled series are looked up once (``labels()`` takes a lock and
        validates the labels, on every one of a fan-out's thousands of calls otherwise)."""
        series = self._series.get((method, outcome))
        if series is None:
            series = self._series[(method, outcome)] = (
                self._metrics.livekit_requests.labels(method, outcome),
                self._metrics.livekit_request_duration.labels(method),
            )
        series[0].inc()
        series[1].observe(seconds, self._tracing.exemplar())

    # -- the domain's LiveKit port --------------------------------------------------------------------

    async def ensure_room(self, room: str) -> None:
        """CreateRoom (idempotent: it returns the existing room), skipped while the room is known to
        exist. A room closed through this service is forgotten at once; one LiveKit closed by itself
        (empty timeout) is re-created by LiveKit when a client joins (auto-create), and the cache
        entry expires after ``room_cache_seconds`` anyway."""
        now = time.monotonic()
        known_until = self._known_rooms.get(room)
        if known_until is not None and known_until > now:
            return
        await self._call("CreateRoom", lambda: self._room.room.create_room(CreateRoomRequest(name=room)))
        if self._room_cache_seconds > 0:
            self._known_rooms[room] = now + self._room_cache_seconds
            self._known_rooms.move_to_end(room)
            while len(self._known_rooms) > _MAX_KNOWN_ROOMS:
                self._known_rooms.popitem(last=False)

    async def list_participants(self, room: str) -> list[ConnectedParticipant]:
        response = await self._call(
            "ListParticipants",
            lambda: self._room_api(room).list_participants(ListParticipantsRequest(room=room)),
        )
        views = _CompactViews()
        return [views.view(info) for info in response.participants]

    async def set_publish_sources(
        self, room: str, changes: Sequence[tuple[ConnectedParticipant, frozenset[str]]]
    ) -> None:
        """One UpdateParticipant per participant, by as many workers as calls may be in flight rather
        than a task per participant: 10,000 tasks waiting on the concurrency bound would cost about a
        tenth of the calls' own CPU."""
        pending = iter(changes)

        async def worker() -> None:
            for participant, sources in pending:
                await self._set_publish_sources(room, participant, sources)

        workers = min(len(changes), self._max_concurrent_requests)
        if workers == 1:
            await worker()
        else:
            await asyncio.gather(*(worker() for _ in range(workers)))

    async def _set_publish_sources(
        self, room: str, participant: ConnectedParticipant, sources: frozenset[str]
    ) -> None:
        # UpdateParticipant replaces the whole permission: start from the current one so that hidden,
        # can_subscribe, can_publish_data and the rest stay as they are.
        permission = permission_of(participant)
        permission.can_publish = bool(sources)
        del permission.can_publish_sources[:]
        permission.can_publish_sources.extend(_SOURCE_BY_NAME[name] for name in sorted(sources))
        request = UpdateParticipantRequest(room=room, identity=participant.identity, permission=permission)
        try:
            await self._call("UpdateParticipant", lambda: self._room_api(room).update_participant(request))
        except _NotFound:
            log.debug("participant left before its permission changed", extra={"room": room})

    async def mute_track(self, room: str, identity: str, track_sid: str) -> None:
        request = MuteRoomTrackRequest(room=room, identity=identity, track_sid=track_sid, muted=True)
        try:
            await self._call("MutePublishedTrack", lambda: self._room_api(room).mute_published_track(request))
        except _NotFound:
            log.debug("participant left before it was muted", extra={"room": room})

    async def remove_participant(self, room: str, identity: str) -> None:
        request = RoomParticipantIdentity(room=room, identity=identity)
        with contextlib.suppress(_NotFound):
            await self._call("RemoveParticipant", lambda: self._room_api(room).remove_participant(request))

    async def delete_room(self, room: str) -> None:
        self._known_rooms.pop(room, None)
        self._room_apis.pop(room, None)
        with contextlib.suppress(_NotFound):
            await self._call("DeleteRoom", lambda: self._room.room.delete_room(DeleteRoomRequest(room=room)))
