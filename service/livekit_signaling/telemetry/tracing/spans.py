"""The tracing port (``port.py``) with OpenTelemetry: a consumer span per command, a producer span per
command's publication of events, client spans for state-store round trips and (``http_client.py``) for
LiveKit calls, retries as span events, statuses for failures. Attributes follow OpenTelemetry's
messaging (RabbitMQ), database (Redis) and HTTP semantic conventions; none holds a token, a secret or a
command's payload.

Bounded: every command has a budget of child spans (``TRACING_SPANS_PER_COMMAND``). Once it is spent,
LiveKit calls and store round trips get no span of their own (LiveKit still receives the command span's
context), the command span counts them (``livekit_signaling.spans_dropped``) and a failed call becomes
an event on it; the SDK bounds a span's events (``OTEL_SPAN_EVENT_COUNT_LIMIT``, 128). A command's events
share one producer span however many there are, as the messaging conventions allow for a batch.

With a tracer that records nothing (``OTEL_TRACES_EXPORTER=none`` outside ``dev``: propagation only) a
command's "span" is the context it came with: its events and LiveKit calls carry that context on, and
nothing is recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any

from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NoOpTracer, SpanKind, Status, StatusCode, Tracer

from livekit_signaling.telemetry.tracing.carrier import extract, inject
from livekit_signaling.telemetry.tracing.port import Addressed, Received

#: Attribute names of our own (not in the semantic conventions), under one namespace.
ROOM = "livekit_signaling.room"
ACTION = "livekit_signaling.action"
OUTCOME = "livekit_signaling.outcome"
DELIVERY_COUNT = "livekit_signaling.delivery_count"
SPANS_DROPPED = "livekit_signaling.spans_dropped"
STEP = "livekit_signaling.step"
ERROR_TYPE = "error.type"

#: Outcomes (``commands_total``'s label) that end a command span with an error status: LiveKit could
#: not be reached, the command was dead-lettered, or it goes back to the queue.
FAILED_OUTCOMES = frozenset(
    {"livekit_unavailable", "dead_lettered", "untrusted_publisher", "malformed_envelope", "room_mismatch",
     "requeued"}
)  # fmt: skip

_RABBITMQ = "rabbitmq"


class _CommandSpan:
    """A command's consumer span: the port's ``CommandTrace``, its own context manager for ``activate``."""

    __slots__ = (
        "_exemplar",
        "_spans_left",
        "_tokens",
        "context",
        "dropped",
        "event_headers",
        "message_id",
        "span",
        "tracing",
    )

    def __init__(
        self, tracing: OpenTelemetryTracing, span: trace.Span, parent: Context, message_id: str | None
    ) -> None:
        self.tracing = tracing
        self.span = span
        self.context = trace.set_span_in_context(span, parent)
        self.message_id = message_id
        self.event_headers: dict[str, str] | None = {}
        self._spans_left = tracing.spans_per_command if span.is_recording() else 0
        self.dropped = 0
        self._exemplar: dict[str, str] | None = None
        self._tokens: tuple[Token[Any], Token[_CommandSpan | None]] | None = None

    # -- the command's own span ------------------------------------------------------------------

    def activate(self, room: str | None) -> _CommandSpan:
        if room is not None and self.span.is_recording():
            self.span.set_attribute(ROOM, room)
        return self

    def __enter__(self) -> None:
        self._tokens = (context_api.attach(self.context), _CURRENT.set(self))

    def __exit__(self, *_: object) -> None:
        if self._tokens is not None:
            context_token, current_token = self._tokens
            _CURRENT.reset(current_token)
            context_api.detach(context_token)
            self._tokens = None

    def retried(self, step: str, reason: str) -> None:
        self.span.add_event("retry", {STEP: step, ERROR_TYPE: reason})

    def failed(self, reason: str) -> None:
        self.span.set_attribute(ERROR_TYPE, reason)
        self.span.set_status(Status(StatusCode.ERROR, reason))

    def settled(self, action: str, outcome: str) -> None:
        if not self.span.is_recording():
            return
        self.span.set_attributes({ACTION: action, OUTCOME: outcome})
        if outcome in FAILED_OUTCOMES:
            self.failed(outcome)

    def exemplar(self) -> dict[str, str] | None:
        if self._exemplar is None:
            span_context = self.span.get_span_context()
            if not span_context.trace_flags.sampled:
                return None
            self._exemplar = {"trace_id": trace.format_trace_id(span_context.trace_id)}
        return self._exemplar

    def end(self) -> None:
        if self.dropped:
            self.span.set_attribute(SPANS_DROPPED, self.dropped)
        self.span.end()

    # -- its children ----------------------------------------------------------------------------

    def take_span(self) -> bool:
        """Whether the budget allows one more child span (False once spent: counted as dropped)."""
        if self._spans_left > 0:
            self._spans_left -= 1
            return True
        if self.span.is_recording():
            self.dropped += 1
        return False

    def publication(self, events: Sequence[Addressed]) -> _Publication:
        return _Publication(self, events)


class _Publication:
    """The producer span of one command's events (``messaging.batch.message_count`` when several)."""

    __slots__ = ("_command", "_events", "span")

    def __init__(self, command: _CommandSpan, events: Sequence[Addressed]) -> None:
        self._command = command
        self._events = events
        self.span: trace.Span = trace.INVALID_SPAN

    def __enter__(self) -> _Publication:
        command = self._command
        tracing = command.tracing
        events = self._events
        if not events:
            return self
        context = command.context
        if command.span.is_recording():
            exchange = tracing.event_exchange
            attributes: dict[str, str | int] = {
                "messaging.system": _RABBITMQ,
                "messaging.operation.type": "send",
                "messaging.operation.name": "publish",
            }
            if len(events) == 1:
                attributes["messaging.destination.name"] = f"{exchange}:{events[0].routing_key}"
                attributes["messaging.rabbitmq.destination.routing_key"] = events[0].routing_key
                attributes["messaging.message.id"] = events[0].message_id
            else:
                attributes["messaging.destination.name"] = exchange
                attributes["messaging.batch.message_count"] = len(events)
            self.span = tracing.tracer.start_span(
                tracing.publish_span_name, context, SpanKind.PRODUCER, attributes
            )
            context = trace.set_span_in_context(self.span, context)
        if command.event_headers is not None:
            inject(context, command.event_headers)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _: TracebackType | None
    ) -> None:
        if error is not None:
            self.failed(type(error).__name__)
        self.span.end()

    def retried(self, step: str, reason: str) -> None:
        self.span.add_event("retry", {STEP: step, ERROR_TYPE: reason})

    def failed(self, reason: str) -> None:
        self.span.set_attribute(ERROR_TYPE, reason)
        self.span.set_status(Status(StatusCode.ERROR, reason))


class _StoreCall:
    """A client span for one state-store round trip (Redis): ``db.*`` attributes, never the keys'
    values or the script's arguments."""

    __slots__ = ("_operation", "_span", "_token", "_tracing")

    def __init__(self, tracing: OpenTelemetryTracing, operation: str) -> None:
        self._tracing = tracing
        self._operation = operation
        self._span: trace.Span | None = None
        self._token: Token[Any] | None = None

    def __enter__(self) -> None:
        command = _CURRENT.get()
        if command is None or not command.take_span():
            return
        self._span = span = self._tracing.tracer.start_span(
            self._operation,
            None,
            SpanKind.CLIENT,
            {"db.system.name": "redis", "db.operation.name": self._operation},
        )
        self._token = context_api.attach(trace.set_span_in_context(span))

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _: TracebackType | None
    ) -> None:
        span = self._span
        if span is None:
            return
        assert self._token is not None
        context_api.detach(self._token)
        if error is not None:
            span.set_attribute(ERROR_TYPE, type(error).__name__)
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        span.end()


class OpenTelemetryTracing:
    """The port, with an OpenTelemetry tracer (the SDK's, or a ``NoOpTracer`` for propagation only)."""

    def __init__(
        self,
        tracer: Tracer,
        *,
        command_exchange: str,
        event_exchange: str,
        spans_per_command: int,
    ) -> None:
        self.tracer = tracer
        self.records = not isinstance(tracer, NoOpTracer)
        self.command_exchange = command_exchange
        self.event_exchange = event_exchange
        self.spans_per_command = spans_per_command
        self.process_span_name = f"process {command_exchange}"
        self.publish_span_name = f"publish {event_exchange}"

    def command(self, delivery: Received) -> _CommandSpan:
        parent = extract(delivery.headers)
        message_id = delivery.message_id
        if not self.records:
            span = self.tracer.start_span(self.process_span_name, parent)
            return _CommandSpan(self, span, parent, message_id)
        routing_key = delivery.routing_key
        attributes: dict[str, str | int] = {
            "messaging.system": _RABBITMQ,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": f"{self.command_exchange}:{routing_key}",
            "messaging.rabbitmq.destination.routing_key": routing_key,
        }
        if message_id is not None:
            attributes["messaging.message.id"] = message_id
        if delivery.delivery_count:
            attributes[DELIVERY_COUNT] = delivery.delivery_count
        span = self.tracer.start_span(self.process_span_name, parent, SpanKind.CONSUMER, attributes)
        return _CommandSpan(self, span, parent, message_id)

    def store_call(self, operation: str) -> _StoreCall:
        return _StoreCall(self, operation)

    def retried(self, step: str, reason: str) -> None:
        command = _CURRENT.get()
        if command is not None:
            command.retried(step, reason)

    def exemplar(self) -> dict[str, str] | None:
        command = _CURRENT.get()
        return command.exemplar() if command is not None else None


#: The command whose span is current in this task (and the tasks it starts).
_CURRENT: ContextVar[_CommandSpan | None] = ContextVar("livekit_signaling_command_span", default=None)


def current_command() -> _CommandSpan | None:
    return _CURRENT.get()
