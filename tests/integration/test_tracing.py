"""Traces across the bus, end to end: the service as a process exports its spans over OTLP/HTTP to a
receiver in this test (opentelemetry-proto parses what arrives); commands go through RabbitMQ as an
instrumented controller publishes them, with a ``traceparent`` header; LiveKit is the emulator, which
records the ``traceparent`` of every call it serves."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from testkit.amqp import SignalingClient, delete_topology
from testkit.emulator import Emulator
from testkit.otlp import OtlpReceiver, ReceivedSpan
from testkit.processes import API_SECRET, EmulatorProcess, Names, ServiceProcess
from tests.integration.test_protocol import join

PARTITIONS = 2


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as otlp:
        yield otlp


@pytest.fixture(scope="module")
def traced_names() -> Names:
    return Names()


@pytest.fixture(scope="module")
def traced_service(
    traced_names: Names, emulator_process: EmulatorProcess, receiver: OtlpReceiver
) -> Iterator[ServiceProcess]:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_SERVICE_NAME": "livekit-signaling-under-test",
        # The SDK's batch processor exports every 5 s by default; the test waits for less.
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }
    process = ServiceProcess(
        traced_names, emulator_process.url, partitions=PARTITIONS, env=env, name="traced"
    )
    process.start()
    yield process
    process.stop()
    asyncio.run(delete_topology(traced_names, PARTITIONS))


@pytest.fixture
async def controller(traced_service: ServiceProcess, traced_names: Names) -> AsyncIterator[SignalingClient]:
    async with SignalingClient(traced_names, name="traced-controller") as signaling:
        yield signaling


def controller_span() -> tuple[str, str, str]:
    """A span of the (instrumented) controller: its trace id, span id and ``traceparent`` header."""
    trace_id, span_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


def trace_of(traceparent: object) -> str:
    assert isinstance(traceparent, str), traceparent
    version, trace_id, _parent, _flags = traceparent.split("-")
    assert version == "00"
    return trace_id


def parent_of(traceparent: str) -> str:
    return traceparent.split("-")[2]


async def consumer_span(receiver: OtlpReceiver, trace_id: str) -> list[ReceivedSpan]:
    """The trace's spans once its consumer span arrived (it ends last: after the command's ack)."""
    await asyncio.to_thread(
        receiver.wait_for, lambda spans: any(s.trace_id == trace_id and s.kind == "consumer" for s in spans)
    )
    return receiver.trace(trace_id)


async def test_a_traced_command_is_one_trace_from_the_controller_through_livekit_to_every_event(
    controller: SignalingClient,
    emulator: Emulator,
    receiver: OtlpReceiver,
    traced_service: ServiceProcess,
    room: str,
) -> None:
    moderator, alice, bob = "moderator", "alice", "bob"
    for participant in (moderator, alice, bob):
        await join(controller, emulator, room, participant, microphone=True)
    calls_before = len(await emulator.traced_calls())
    trace_id, parent, traceparent = controller_span()

    message_id = await controller.send(
        room,
        moderator,
        {"action": "enable_microphone_restrictions", "unrestricted_participants": [alice]},
        role="moderator",
        headers={"traceparent": traceparent, "baggage": "tenant=acme"},
    )

    # Every event carries the trace, with the service's producer span as its parent, and the baggage.
    events = await controller.wait_for(lambda e: e.correlation_id == message_id, count=3)
    assert {trace_of(event.headers.get("traceparent")) for event in events} == {trace_id}
    assert {event.headers.get("baggage") for event in events} == {"tenant=acme"}
    spans = await consumer_span(receiver, trace_id)
    by_id = {span.span_id: span for span in spans}
    [consumer] = [span for span in spans if span.kind == "consumer"]
    [producer] = [span for span in spans if span.kind == "producer"]
    assert {parent_of(event.headers["traceparent"]) for event in events} == {producer.span_id}

    # One tree under the controller's span: the consumer span is its child, everything else descends
    # from the consumer span.
    assert consumer.parent_id == parent
    assert consumer.service == "livekit-signaling-under-test"
    assert consumer.attributes["messaging.system"] == "rabbitmq"
    assert consumer.attributes["messaging.message.id"] == message_id
    assert consumer.attributes["livekit_signaling.room"] == room
    assert consumer.attributes["livekit_signaling.action"] == "enable_microphone_restrictions"
    for span in spans:
        if span is consumer:
            continue
        ancestor = span
        while ancestor.parent_id != consumer.span_id:
            assert ancestor.parent_id in by_id, f"{span.name} is not under the command's span"
            ancestor = by_id[ancestor.parent_id]
    assert producer.attributes["messaging.batch.message_count"] == 3

    # LiveKit saw the trace on every call the command made, each with its client span as the parent.
    # (The emulator serves the session's other services too, whose reconcilers call it meanwhile.)
    traced = {
        parent_of(traceparent): method
        for method, traceparent in (await emulator.traced_calls())[calls_before:]
        if traceparent is not None and trace_of(traceparent) == trace_id
    }
    clients = {span.span_id: span for span in spans if span.kind == "client"}
    assert traced.keys() == clients.keys()
    assert set(traced.values()) == {"ListParticipants", "UpdateParticipant"}
    for span_id, method in traced.items():
        assert clients[span_id].name == f"POST /twirp/livekit.RoomService/{method}"
        assert clients[span_id].attributes["http.response.status_code"] == 200

    # The command's latency is in a histogram bucket whose exemplar is this trace (OpenMetrics only).
    status, text = await asyncio.to_thread(_scrape_openmetrics, traced_service)
    assert status == 200
    assert re.search(
        r'^livekit_signaling_command_duration_seconds_bucket\{action="enable_microphone_restrictions",'
        rf'le="[^"]+"\}} \d+(\.\d+)? # \{{trace_id="{trace_id}"\}}',
        text,
        re.MULTILINE,
    ), text[-3000:]


def _scrape_openmetrics(service: ServiceProcess) -> tuple[int, str]:
    import urllib.request

    request = urllib.request.Request(
        f"http://127.0.0.1:{service.port}/metrics",
        headers={"Accept": "application/openmetrics-text; version=1.0.0; charset=utf-8"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - our own endpoint
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
        return response.status, response.read().decode()


async def test_a_command_without_context_starts_a_trace_of_its_own(
    controller: SignalingClient, receiver: OtlpReceiver, room: str
) -> None:
    message_id = await controller.send(room, "carol", {"action": "join"})
    [event] = await controller.wait_for(lambda e: e.correlation_id == message_id)
    trace_id = trace_of(event.headers.get("traceparent"))
    spans = await consumer_span(receiver, trace_id)
    [consumer] = [span for span in spans if span.kind == "consumer"]
    assert consumer.parent_id is None
    assert consumer.attributes["messaging.message.id"] == message_id


async def test_a_log_line_inside_a_command_names_its_trace_and_span(
    controller: SignalingClient, receiver: OtlpReceiver, traced_service: ServiceProcess, room: str
) -> None:
    """A redelivered command is logged (INFO, "duplicate command ignored"), inside its consumer span."""
    message_id = uuid.uuid4().hex
    await controller.send(room, "dave", {"action": "join"}, message_id=message_id)
    await controller.wait_for(lambda e: e.correlation_id == message_id)
    trace_id, _, traceparent = controller_span()
    await controller.send(
        room, "dave", {"action": "join"}, message_id=message_id, headers={"traceparent": traceparent}
    )
    [consumer] = [span for span in await consumer_span(receiver, trace_id) if span.kind == "consumer"]
    assert consumer.attributes["livekit_signaling.outcome"] == "duplicate"
    lines = [json.loads(line) for line in traced_service.logs().splitlines() if line.startswith("{")]
    [duplicate] = [
        line
        for line in lines
        if line["message"] == "duplicate command ignored" and line.get("trace_id") == trace_id
    ]
    assert duplicate["span_id"] == consumer.span_id
    assert duplicate["message_id"] == message_id


async def test_no_span_attribute_or_event_holds_a_token_or_a_secret(
    controller: SignalingClient, emulator: Emulator, receiver: OtlpReceiver, room: str
) -> None:
    """Commands whose events hand out tokens, and one that fails at LiveKit: nothing of it in the spans."""
    tokens = []
    for participant in ("erin", "frank"):
        event, _ = await join(controller, emulator, room, participant)
        tokens.append(event.payload["credentials"]["token"])
    popout = await controller.reply(room, "erin", {"action": "request_popout_stream_access_token"})
    tokens.append(popout.payload["token"])
    await emulator.fault("unavailable")
    trace_id, _, traceparent = controller_span()
    message_id = await controller.send(
        room,
        "erin",
        {"action": "force_mute", "participants": ["frank"]},
        role="moderator",
        headers={"traceparent": traceparent},
    )
    [failed] = await controller.wait_for(lambda e: e.correlation_id == message_id)
    assert failed.payload["error"] == "livekit_unavailable"
    await emulator.fault("none")
    [consumer] = [span for span in await consumer_span(receiver, trace_id) if span.kind == "consumer"]
    assert consumer.error == "livekit_unavailable"
    assert [name for name, _ in consumer.events].count("retry") >= 1

    said = [item for span in receiver.spans for item in span.everything_said()]
    assert said
    for key, text in said:
        assert API_SECRET not in text, key
        assert "Bearer" not in text and "eyJ" not in text, (key, text)
        assert all(token not in text for token in tokens), key
        assert "authorization" not in key.lower()
