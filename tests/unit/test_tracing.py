"""The spans of a command, recorded with the SDK's in-memory exporter: the processor, the real LiveKit
adapter against the emulator in this process (LiveKit sees the trace in each call's ``traceparent``),
the real state stores, and a transport that confirms every event at once (the real broker is in
tests/integration/test_tracing.py). For every command type: one consumer span under the controller's,
a client span per LiveKit call and a producer span for its events beneath it, and the events carrying
the producer span's context."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NoOpTracer, SpanKind, StatusCode, format_span_id, format_trace_id

from livekit_signaling.domain.ports import StateStore
from livekit_signaling.emulator import EmulatorFault, LiveKitEmulator
from livekit_signaling.pipeline.ports import Delivery, OutgoingEvent
from livekit_signaling.pipeline.processor import CommandProcessor
from livekit_signaling.store.memory import MemoryStateStore
from livekit_signaling.store.redis import RedisStateStore
from livekit_signaling.telemetry.tracing import NO_COMMAND_TRACE, NO_TRACING, Tracing
from livekit_signaling.telemetry.tracing.carrier import current_headers
from livekit_signaling.telemetry.tracing.http_client import livekit_trace_config
from livekit_signaling.telemetry.tracing.setup import TracingConfig, TracingSetup, sampler, start_tracing
from livekit_signaling.telemetry.tracing.spans import OpenTelemetryTracing, current_trace_ids
from testkit.pipeline import ConfirmingTransport, Pipeline, start_pipeline
from testkit.processes import REDIS_URL

KEY, SECRET = "trace-key", "trace-secret-" + "x" * 32
COMMANDS, EVENTS = "commands.x", "events.x"
TWIRP = "POST /twirp/livekit.RoomService/"
#: The controller's span: what an instrumented upstream publisher writes into the command's headers.
CONTROLLER_TRACE = uuid.uuid4().hex
CONTROLLER_SPAN = uuid.uuid4().hex[:16]
TRACEPARENT = f"00-{CONTROLLER_TRACE}-{CONTROLLER_SPAN}-01"
MODERATOR, ALICE, BOB = "p0", "p1", "p2"


@dataclass
class Rig:
    """One command pipeline with tracing, and what it recorded."""

    pipeline: Pipeline
    emulator: LiveKitEmulator
    exporter: Exporter
    room: str

    @property
    def processor(self) -> CommandProcessor:
        return self.pipeline.processor

    @property
    def transport(self) -> ConfirmingTransport:
        return self.pipeline.transport

    def delivery(
        self,
        payload: dict[str, Any],
        participant: str,
        role: str,
        headers: dict[str, Any],
        body: bytes | None,
    ) -> Delivery:
        envelope = {"room": self.room, "participant": participant, "role": role, "payload": payload}
        return Delivery(
            body=body if body is not None else json.dumps(envelope).encode(),
            routing_key=f"room.{self.room}",
            message_id=uuid.uuid4().hex,
            partition=0,
            delivery_count=0,
            headers=headers,
        )

    async def join_with(self, headers: dict[str, Any]) -> tuple[OutgoingEvent, list[str | None]]:
        """ALICE joins, with ``headers``, and the command is acknowledged (there may be no span to wait
        for): its event, and the ``traceparent`` each of its LiveKit calls carried."""
        calls_before = len(self.emulator.calls)
        delivery = self.delivery({"action": "join"}, ALICE, "user", headers, None)
        self.processor.on_delivery(delivery)
        await self.transport.until(lambda: delivery.message_id in self.transport.acked)
        return self.transport.published[-1], self.emulator.traceparents[calls_before:]

    async def run(
        self,
        payload: dict[str, Any],
        *,
        participant: str = MODERATOR,
        role: str = "moderator",
        headers: dict[str, Any] | None = None,
        body: bytes | None = None,
    ) -> Sent:
        """Deliver one command (with the controller's trace unless ``headers`` says otherwise) and wait
        until it is settled and its consumer span ended."""
        self.exporter.clear()
        calls_before = len(self.emulator.calls)
        published_before = len(self.transport.published)
        traced = {"traceparent": TRACEPARENT} if headers is None else headers
        delivery = self.delivery(payload, participant, role, traced, body)
        ended = self.exporter.consumer_span_ended = asyncio.Event()
        self.processor.on_delivery(delivery)
        async with asyncio.timeout(2):
            await ended.wait()
        return Sent(
            spans=list(self.exporter.get_finished_spans()),
            events=self.transport.published[published_before:],
            calls=self.emulator.calls[calls_before:],
            traceparents=self.emulator.traceparents[calls_before:],
        )


@dataclass
class Sent:
    spans: list[ReadableSpan]
    events: list[OutgoingEvent]
    #: LiveKit methods the emulator served for the command, and the ``traceparent`` each carried.
    calls: list[str]
    traceparents: list[str | None]

    @property
    def consumer(self) -> ReadableSpan:
        [span] = [s for s in self.spans if s.kind is SpanKind.CONSUMER]
        return span

    def of_kind(self, kind: SpanKind) -> list[ReadableSpan]:
        return [s for s in self.spans if s.kind is kind]

    @property
    def trace_id(self) -> str:
        return format_trace_id(self.consumer.context.trace_id)


def span_id(span: ReadableSpan) -> str:
    return format_span_id(span.context.span_id)


def parent_id(span: ReadableSpan) -> str | None:
    return format_span_id(span.parent.span_id) if span.parent is not None else None


class Exporter(InMemorySpanExporter):
    """Keeps the spans, and tells when a consumer span (the end of a command) arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.consumer_span_ended = asyncio.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = super().export(spans)
        if any(span.kind is SpanKind.CONSUMER for span in spans):
            self.consumer_span_ended.set()
        return result


async def make_rig(
    emulator: LiveKitEmulator, tracing: Tracing, exporter: Exporter, store: StateStore, *, attempts: int = 3
) -> Rig:
    pipeline = await start_pipeline(
        emulator.url,
        store,
        api_key=KEY,
        api_secret=SECRET,
        tracing=tracing,
        trace_configs=[livekit_trace_config(tracing)] if isinstance(tracing, OpenTelemetryTracing) else [],
        attempts=attempts,
    )
    return Rig(pipeline, emulator, exporter, f"room-{uuid.uuid4().hex[:8]}")


@pytest.fixture
async def emulator() -> AsyncIterator[LiveKitEmulator]:
    emu = LiveKitEmulator(KEY, SECRET)
    await emu.start()
    yield emu
    await emu.stop()


@pytest.fixture
def exporter() -> Exporter:
    return Exporter()


def recording(exporter: Exporter, *, spans_per_command: int = 32) -> OpenTelemetryTracing:
    """The SDK with its default sampler (parent-based, always on), into ``exporter``."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return OpenTelemetryTracing(
        provider.get_tracer("test"),
        command_exchange=COMMANDS,
        event_exchange=EVENTS,
        spans_per_command=spans_per_command,
        follows_parent=True,
    )


@pytest.fixture
async def rig(emulator: LiveKitEmulator, exporter: Exporter) -> AsyncIterator[Rig]:
    """A room of three who joined through the service and are connected to LiveKit with a microphone."""
    store = MemoryStateStore(dedup_window_seconds=60, room_idle_seconds=3600)
    rig = await make_rig(emulator, recording(exporter), exporter, store)
    emulator.add_participants(rig.room, 3, "p", ["microphone"])
    for participant in (MODERATOR, ALICE, BOB):
        role = "moderator" if participant == MODERATOR else "user"
        await rig.run({"action": "join"}, participant=participant, role=role)
    yield rig
    await rig.pipeline.close()


#: Every command type, with LiveKit methods it must call in this room (more may follow).
COMMAND_TYPES: dict[str, tuple[dict[str, Any], list[str]]] = {
    "join": ({"action": "join"}, ["CreateRoom"]),
    "create_new_access_token": ({"action": "create_new_access_token"}, ["CreateRoom"]),
    "request_popout_stream_access_token": ({"action": "request_popout_stream_access_token"}, []),
    "force_mute": (
        {"action": "force_mute", "participants": [ALICE]},
        ["ListParticipants", "MutePublishedTrack"],
    ),
    "grant_screen_share_permission": (
        {"action": "grant_screen_share_permission", "participants": [ALICE]},
        ["ListParticipants"],
    ),
    "revoke_screen_share_permission": (
        {"action": "revoke_screen_share_permission", "participants": [ALICE]},
        ["ListParticipants"],
    ),
    "enable_microphone_restrictions": (
        {"action": "enable_microphone_restrictions", "unrestricted_participants": [ALICE]},
        ["ListParticipants", "UpdateParticipant"],
    ),
    "disable_microphone_restrictions": ({"action": "disable_microphone_restrictions"}, ["ListParticipants"]),
    "leave": ({"action": "leave"}, ["RemoveParticipant"]),
    "close_room": ({"action": "close_room"}, ["DeleteRoom"]),
}


@pytest.mark.parametrize("action", COMMAND_TYPES)
async def test_the_span_tree_of_every_command_type(rig: Rig, action: str) -> None:
    payload, must_call = COMMAND_TYPES[action]
    sent = await rig.run(payload)

    consumer = sent.consumer
    assert sent.trace_id == CONTROLLER_TRACE  # one trace with the controller's
    assert (
        parent_id(consumer) == CONTROLLER_SPAN and consumer.parent is not None and consumer.parent.is_remote
    )
    assert consumer.name == f"process {COMMANDS}"
    assert consumer.attributes is not None
    assert consumer.attributes["messaging.system"] == "rabbitmq"
    assert consumer.attributes["messaging.operation.type"] == "process"
    assert consumer.attributes["messaging.destination.name"] == f"{COMMANDS}:room.{rig.room}"
    assert consumer.attributes["livekit_signaling.room"] == rig.room
    assert consumer.attributes["livekit_signaling.action"] == action
    assert consumer.attributes["livekit_signaling.outcome"] == "ok"
    assert consumer.status.status_code is StatusCode.UNSET

    # One client span per LiveKit call, each under the consumer span, and LiveKit saw each one's context.
    assert set(must_call) <= set(sent.calls)
    clients = sent.of_kind(SpanKind.CLIENT)
    assert Counter(s.name for s in clients) == Counter(TWIRP + call for call in sent.calls)
    assert all(parent_id(s) == span_id(consumer) for s in clients)
    assert sorted(sent.traceparents, key=str) == sorted(
        (f"00-{CONTROLLER_TRACE}-{span_id(s)}-01" for s in clients), key=str
    )

    # The events: one producer span under the consumer span, whose context each event carries.
    producers = sent.of_kind(SpanKind.PRODUCER)
    assert len(producers) == (1 if sent.events else 0)
    for producer in producers:
        assert parent_id(producer) == span_id(consumer)
        assert producer.name == f"publish {EVENTS}"
        assert producer.attributes is not None
        if len(sent.events) > 1:
            assert producer.attributes["messaging.batch.message_count"] == len(sent.events)
        else:
            assert producer.attributes["messaging.message.id"] == sent.events[0].message_id
        for event in sent.events:
            assert event.headers == {"traceparent": f"00-{CONTROLLER_TRACE}-{span_id(producer)}-01"}
    assert len(sent.spans) == 1 + len(clients) + len(producers)


async def test_a_command_without_a_trace_starts_one_of_its_own(rig: Rig) -> None:
    sent = await rig.run({"action": "create_new_access_token"}, headers={})
    assert sent.consumer.parent is None
    assert sent.trace_id != CONTROLLER_TRACE
    assert {format_trace_id(s.context.trace_id) for s in sent.spans} == {sent.trace_id}
    [event] = sent.events
    assert event.headers is not None and event.headers["traceparent"].split("-")[1] == sent.trace_id


async def test_baggage_and_tracestate_travel_on_to_the_events(rig: Rig) -> None:
    headers = {"traceparent": TRACEPARENT, "tracestate": "vendor=abc", "baggage": "tenant=acme"}
    sent = await rig.run({"action": "create_new_access_token"}, headers=headers)
    [event] = sent.events
    assert event.headers is not None
    assert event.headers["tracestate"] == "vendor=abc"
    assert event.headers["baggage"] == "tenant=acme"


async def test_a_restriction_fan_out_is_bounded_by_the_span_budget(
    emulator: LiveKitEmulator, exporter: Exporter
) -> None:
    """200 participants, 8 spans allowed: one consumer span, 8 client spans, one producer span for the
    200 events; the other calls are counted on the consumer span, and all of them carry the trace."""
    store = MemoryStateStore(dedup_window_seconds=60, room_idle_seconds=3600)
    rig = await make_rig(emulator, recording(exporter, spans_per_command=8), exporter, store)
    try:
        people = emulator.add_participants(rig.room, 200, "p", ["microphone"])
        for person in people:
            await rig.run({"action": "join"}, participant=person, role="user")
        sent = await rig.run(
            {"action": "enable_microphone_restrictions", "unrestricted_participants": []},
            participant=people[0],
            role="moderator",
        )
    finally:
        await rig.pipeline.close()
    assert sent.calls.count("UpdateParticipant") == 200
    assert len(sent.of_kind(SpanKind.CLIENT)) == 8
    [producer] = sent.of_kind(SpanKind.PRODUCER)
    assert producer.attributes is not None and producer.attributes["messaging.batch.message_count"] == 200
    assert len(sent.spans) == 10
    assert sent.consumer.attributes is not None
    assert sent.consumer.attributes["livekit_signaling.spans_dropped"] == len(sent.calls) - 8
    assert all(parent is not None and CONTROLLER_TRACE in parent for parent in sent.traceparents)


async def test_livekit_unavailable_fails_the_span_and_shows_the_retries(
    emulator: LiveKitEmulator, exporter: Exporter
) -> None:
    store = MemoryStateStore(dedup_window_seconds=60, room_idle_seconds=3600)
    rig = await make_rig(emulator, recording(exporter), exporter, store, attempts=3)
    emulator.fault = EmulatorFault.UNAVAILABLE
    try:
        sent = await rig.run({"action": "join"})
    finally:
        await rig.pipeline.close()
    consumer = sent.consumer
    assert consumer.status.status_code is StatusCode.ERROR
    assert consumer.status.description == "livekit_unavailable"
    retries = [e for e in consumer.events if e.name == "retry"]
    assert [e.attributes["livekit_signaling.step"] for e in retries if e.attributes] == ["CreateRoom"] * 2
    clients = sent.of_kind(SpanKind.CLIENT)
    assert len(clients) == 3
    assert all(s.status.status_code is StatusCode.ERROR for s in clients)
    assert all(s.attributes and s.attributes["http.response.status_code"] == 503 for s in clients)
    [event] = sent.events  # the sender is told, in the same trace
    assert event.headers is not None and CONTROLLER_TRACE in event.headers["traceparent"]


async def test_a_dead_lettered_command_fails_its_span_and_keeps_its_trace(rig: Rig) -> None:
    sent = await rig.run({}, body=b"not json")
    consumer = sent.consumer
    assert consumer.status.status_code is StatusCode.ERROR
    assert consumer.status.description == "malformed_envelope"
    assert sent.trace_id == CONTROLLER_TRACE
    [(reason, headers)] = rig.transport.dead_letters
    assert reason.startswith("malformed_envelope")
    assert headers["traceparent"] == TRACEPARENT


async def test_no_span_holds_a_token_or_the_secret(rig: Rig) -> None:
    spans: list[ReadableSpan] = []
    for payload, _ in COMMAND_TYPES.values():
        spans += (await rig.run(payload)).spans
    emitted = [
        (key, str(value))
        for span in spans
        for attributes in (span.attributes, *(event.attributes for event in span.events))
        for key, value in (attributes or {}).items()
    ]
    assert emitted
    for key, value in emitted:
        assert SECRET not in value and "eyJ" not in value and "Bearer" not in value, (key, value)
        assert "authorization" not in key.lower()


async def test_state_store_round_trips_are_client_spans_of_the_command(
    emulator: LiveKitEmulator, exporter: Exporter
) -> None:
    tracing = recording(exporter)
    store = RedisStateStore(
        REDIS_URL,
        prefix=f"test-trace-{uuid.uuid4().hex[:8]}",
        dedup_window_seconds=60,
        room_idle_seconds=60,
        tracing=tracing,
    )
    rig = await make_rig(emulator, tracing, exporter, store)
    try:
        sent = await rig.run({"action": "join"})
    finally:
        await rig.pipeline.close()
        await store.delete(rig.room)
        await store.close()
    store_spans = [
        s for s in sent.of_kind(SpanKind.CLIENT) if s.attributes and "db.system.name" in s.attributes
    ]
    # The duplicate check with the read of the sender's roster entry (one round trip), the entry
    # written, and the mark as processed.
    assert [s.name for s in sorted(store_spans, key=lambda s: s.start_time or 0)] == [
        "EXISTS HMGET",
        "EVAL",
        "SET",
    ]
    assert all(parent_id(s) == span_id(sent.consumer) for s in store_spans)
    assert all(s.attributes and s.attributes["db.system.name"] == "redis" for s in store_spans)


async def test_propagation_only_passes_the_controllers_context_on(
    emulator: LiveKitEmulator, exporter: Exporter
) -> None:
    """No spans recorded (``OTEL_TRACES_EXPORTER=none``): the events and the LiveKit calls carry the
    controller's own context, so its event consumers still see one trace."""
    store = MemoryStateStore(dedup_window_seconds=60, room_idle_seconds=3600)
    tracing = OpenTelemetryTracing(
        NoOpTracer(), command_exchange=COMMANDS, event_exchange=EVENTS, spans_per_command=32
    )
    rig = await make_rig(emulator, tracing, exporter, store)
    headers = {"traceparent": TRACEPARENT, "baggage": "tenant=acme"}
    try:
        event, traceparents = await rig.join_with(headers)
    finally:
        await rig.pipeline.close()
    assert event.headers == headers
    assert traceparents == [TRACEPARENT]
    assert exporter.get_finished_spans() == ()


async def test_with_tracing_off_nothing_is_passed_on(emulator: LiveKitEmulator, exporter: Exporter) -> None:
    store = MemoryStateStore(dedup_window_seconds=60, room_idle_seconds=3600)
    rig = await make_rig(emulator, NO_TRACING, exporter, store)
    try:
        event, traceparents = await rig.join_with({"traceparent": TRACEPARENT})
    finally:
        await rig.pipeline.close()
    assert event.headers is None
    assert traceparents == [None]


# -- the SDK as the settings configure it ------------------------------------------------------------------


def _start(config: TracingConfig, *, keep_for_console: bool = False) -> TracingSetup:
    return start_tracing(
        config,
        command_exchange=COMMANDS,
        event_exchange=EVENTS,
        instance="host:1:abc",
        version="0",
        keep_for_console=keep_for_console,
    )


def test_off_is_the_no_op_and_no_trace_config() -> None:
    setup = _start(TracingConfig(disabled=True, exporter="otlp"))
    assert setup.tracing is NO_TRACING
    assert setup.http_trace_configs == []
    assert setup.provider is None


def test_without_an_exporter_nothing_is_recorded_but_the_context_travels() -> None:
    setup = _start(TracingConfig(exporter="none"))
    assert isinstance(setup.tracing, OpenTelemetryTracing) and not setup.tracing.records
    assert len(setup.http_trace_configs) == 1
    assert setup.provider is None and setup.controller_traces(command_exchange=COMMANDS) is None


def test_dev_records_and_keeps_spans_without_an_exporter() -> None:
    setup = _start(TracingConfig(exporter="none"), keep_for_console=True)
    assert isinstance(setup.tracing, OpenTelemetryTracing) and setup.tracing.records
    traces = setup.controller_traces(command_exchange=COMMANDS)
    assert traces is not None
    with traces.publishing("room.r", "m1") as trace_id:
        # Current inside, so that a message published here carries it.
        assert current_headers() is not None
    [span] = traces.spans(trace_id)
    assert (span.name, span.kind, span.parent_id) == (f"publish {COMMANDS}", "producer", None)
    assert setup.provider is not None
    assert setup.provider.resource.attributes["service.instance.id"] == "host:1:abc"


def test_samplers_by_name() -> None:
    assert (
        sampler("parentbased_always_on", None)
        .get_description()
        .startswith("ParentBased{root:AlwaysOnSampler,remoteParentSampled:AlwaysOnSampler")
    )
    assert sampler("traceidratio", 0.25).get_description() == "TraceIdRatioBased{0.25}"
    assert sampler("always_off", None).get_description() == "AlwaysOffSampler"


# -- propagation only: the headers as they came ----------------------------------------------------------

VALID = f"00-{CONTROLLER_TRACE}-{CONTROLLER_SPAN}-01"


@pytest.mark.parametrize(
    ("headers", "passed"),
    [
        ({}, None),
        ({"traceparent": VALID, "tracestate": "v=1"}, {"traceparent": VALID, "tracestate": "v=1"}),
        ({"traceparent": VALID.encode()}, {"traceparent": VALID}),  # an AMQP long string as bytes
        # A later version's extra fields are dropped; it goes on as version 00.
        ({"traceparent": f"01-{CONTROLLER_TRACE}-{CONTROLLER_SPAN}-01-extra"}, {"traceparent": VALID}),
        ({"traceparent": f"ff-{CONTROLLER_TRACE}-{CONTROLLER_SPAN}-01"}, None),
        ({"traceparent": f"00-{'0' * 32}-{CONTROLLER_SPAN}-01"}, None),
        ({"traceparent": f"00-{CONTROLLER_TRACE}-{'0' * 16}-01"}, None),
        ({"traceparent": f"00-{CONTROLLER_TRACE.upper()}-{CONTROLLER_SPAN}-01"}, None),
        ({"traceparent": VALID + "-extra"}, None),
        # tracestate means nothing without a traceparent; baggage is a header of its own.
        ({"traceparent": "garbage", "tracestate": "v=1", "baggage": "a=b"}, {"baggage": "a=b"}),
        ({"traceparent": 42}, None),
    ],
)
def test_propagation_only_checks_the_traceparent_and_passes_the_headers_on(
    headers: dict[str, Any], passed: dict[str, str] | None
) -> None:
    tracing = OpenTelemetryTracing(
        NoOpTracer(), command_exchange=COMMANDS, event_exchange=EVENTS, spans_per_command=32
    )
    delivery = Delivery(
        body=b"", routing_key="room.r", message_id="m", partition=0, delivery_count=0, headers=headers
    )
    command = tracing.command(delivery)
    assert command.event_headers == passed
    if passed is None:
        assert command is NO_COMMAND_TRACE  # nothing built for a command without a trace


def test_propagation_only_gives_log_lines_and_exemplars_the_controllers_ids() -> None:
    tracing = OpenTelemetryTracing(
        NoOpTracer(), command_exchange=COMMANDS, event_exchange=EVENTS, spans_per_command=32
    )
    headers = {"traceparent": VALID}
    delivery = Delivery(
        body=b"", routing_key="room.r", message_id="m", partition=0, delivery_count=0, headers=headers
    )
    command = tracing.command(delivery)
    with command.activate("r"):
        assert current_trace_ids() == (CONTROLLER_TRACE, CONTROLLER_SPAN)
        assert tracing.exemplar() == {"trace_id": CONTROLLER_TRACE}
    assert current_trace_ids() is None
    unsampled = Delivery(
        body=b"",
        routing_key="room.r",
        message_id="m",
        partition=0,
        delivery_count=0,
        headers={"traceparent": VALID[:-2] + "00"},
    )
    assert tracing.command(unsampled).exemplar() is None


async def test_a_command_whose_controller_did_not_sample_its_trace_records_nothing_and_passes_it_on(
    emulator: LiveKitEmulator, exporter: Exporter
) -> None:
    store = MemoryStateStore(dedup_window_seconds=60, room_idle_seconds=3600)
    rig = await make_rig(emulator, recording(exporter), exporter, store)
    unsampled = f"00-{CONTROLLER_TRACE}-{CONTROLLER_SPAN}-00"
    try:
        event, traceparents = await rig.join_with({"traceparent": unsampled})
    finally:
        await rig.pipeline.close()
    assert event.headers == {"traceparent": unsampled}
    assert traceparents == [unsampled]
    assert exporter.get_finished_spans() == ()
