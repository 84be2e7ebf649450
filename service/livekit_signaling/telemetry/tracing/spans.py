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
command has no span: its trace headers are checked and passed on as they came (``PassedOn``), to its
events and its LiveKit calls, without building any OpenTelemetry object.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping, MutableMapping, Sequence
from contextlib import AbstractContextManager
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any

from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NoOpTracer, SpanKind, Status, StatusCode, Tracer

from livekit_signaling.telemetry.tracing.carrier import extract, inject
from livekit_signaling.telemetry.tracing.port import (
    NO_COMMAND_TRACE,
    NO_TRACING,
    Addressed,
    CommandTrace,
    Received,
    TraceSpan,
)

#: Attribute names of our own (not in the semantic conventions), under one namespace.
ROOM = "livekit_signaling.room"
ACTION = "livekit_signaling.action"
OUTCOME = "livekit_signaling.outcome"
DELIVERY_COUNT = "livekit_signaling.delivery_count"
SPANS_DROPPED = "livekit_signaling.spans_dropped"
STEP = "livekit_signaling.step"
ERROR_TYPE = "error.type"
#: The event on a command span for a LiveKit call that failed without a span of its own.
FAILED_CALL = "livekit call failed"

#: Outcomes (``commands_total``'s label) that end a command span with an error status: LiveKit could
#: not be reached, the command was dead-lettered, or it goes back to the queue.
FAILED_OUTCOMES = frozenset(
    {"livekit_unavailable", "dead_lettered", "untrusted_publisher", "malformed_envelope", "room_mismatch",
     "requeued"}
)  # fmt: skip

_RABBITMQ = "rabbitmq"


class CommandSpan:
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
        self._tokens: tuple[Token[Any], Token[_Command | None]] | None = None

    # -- the command's own span ------------------------------------------------------------------

    def activate(self, room: str | None) -> CommandSpan:
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

    def trace_ids(self) -> tuple[str, str]:
        """For log lines: the ids of its trace and of its span."""
        span_context = self.span.get_span_context()
        return trace.format_trace_id(span_context.trace_id), trace.format_span_id(span_context.span_id)

    # -- its children ----------------------------------------------------------------------------

    def propagate(self, headers: MutableMapping[str, str]) -> None:
        """The command span's context, for a LiveKit call without a span of its own."""
        inject(self.context, headers)

    def call_failed(self, attributes: Mapping[str, str | int]) -> None:
        """A LiveKit call without a span of its own failed: an event on the command span."""
        self.span.add_event(FAILED_CALL, attributes)

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


#: A Traceparent header (W3C Trace Context): version, trace id, parent id, flags, and for versions after
#: 00 possibly more fields, which a receiver ignores.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16


def _header(headers: Mapping[str, object], key: str) -> str | None:
    value = headers.get(key)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value if isinstance(value, str) and value else None


class PassedOn:
    """Propagation only: a command's trace headers, checked and passed on as they came, as W3C Trace
    Context has a participant that records nothing do: the controller's span stays the parent of what
    follows. No span, nothing recorded, no OpenTelemetry object built."""

    __slots__ = ("_exemplar", "_token", "event_headers", "sampled", "span_id", "trace_id")

    def __init__(self, headers: dict[str, str], trace_id: str | None, span_id: str, sampled: bool) -> None:
        self.event_headers: dict[str, str] | None = headers
        self.trace_id = trace_id
        self.span_id = span_id
        #: Whether the controller records its trace (the traceparent's sampled flag).
        self.sampled = sampled
        self._exemplar = {"trace_id": trace_id} if trace_id is not None and sampled else None
        self._token: Token[_Command | None] | None = None

    @classmethod
    def of(cls, headers: Mapping[str, object]) -> CommandTrace:
        """What ``headers`` carry to pass on; nothing (and no object) when they carry no trace."""
        traceparent, baggage = _header(headers, "traceparent"), _header(headers, "baggage")
        passed: dict[str, str] = {}
        trace_id, span_id, sampled = None, "", False
        match = _TRACEPARENT.fullmatch(traceparent.strip(" \t")) if traceparent is not None else None
        if match is not None:
            version, trace_id, span_id, flags, rest = match.groups()
            if (
                version == "ff"
                or (version == "00" and rest)
                or trace_id == _ZERO_TRACE
                or span_id == _ZERO_SPAN
            ):
                trace_id = None
            else:
                # Passed on as version 00, the one this service speaks (a later version's extra fields
                # are dropped, as the specification has a version-00 participant do).
                passed["traceparent"] = f"00-{trace_id}-{span_id}-{flags}"
                sampled = bool(int(flags, 16) & 1)
                tracestate = _header(headers, "tracestate")
                if tracestate is not None:
                    passed["tracestate"] = tracestate
        if baggage is not None:
            passed["baggage"] = baggage
        if not passed:
            return NO_COMMAND_TRACE
        return cls(passed, trace_id, span_id, sampled)

    def activate(self, room: str | None) -> PassedOn:
        return self

    def __enter__(self) -> None:
        self._token = _CURRENT.set(self)

    def __exit__(self, *_: object) -> None:
        if self._token is not None:
            _CURRENT.reset(self._token)
            self._token = None

    def publication(self, events: Sequence[Addressed]) -> AbstractContextManager[TraceSpan]:
        return _NO_PUBLICATION

    def exemplar(self) -> dict[str, str] | None:
        return self._exemplar

    def trace_ids(self) -> tuple[str, str] | None:
        return (self.trace_id, self.span_id) if self.trace_id is not None else None

    def take_span(self) -> bool:
        return False

    def propagate(self, headers: MutableMapping[str, str]) -> None:
        if self.event_headers:
            headers.update(self.event_headers)

    def retried(self, step: str, reason: str) -> None:
        pass

    def failed(self, reason: str) -> None:
        pass

    def call_failed(self, attributes: Mapping[str, str | int]) -> None:
        pass

    def settled(self, action: str, outcome: str) -> None:
        pass

    def end(self) -> None:
        pass


_NO_PUBLICATION: AbstractContextManager[TraceSpan] = contextlib.nullcontext(NO_TRACING)


class _Publication:
    """The producer span of one command's events (``messaging.batch.message_count`` when several)."""

    __slots__ = ("_command", "_events", "span")

    def __init__(self, command: CommandSpan, events: Sequence[Addressed]) -> None:
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
    """The port, with an OpenTelemetry tracer (the SDK's, or a ``NoOpTracer`` for propagation only).

    ``follows_parent``: the SDK's sampler is parent-based, so a command whose controller did not sample
    its trace records nothing; its headers are passed on as in propagation only, without asking the SDK
    for a span that would record nothing (most commands, when controllers sample a fraction)."""

    def __init__(
        self,
        tracer: Tracer,
        *,
        command_exchange: str,
        event_exchange: str,
        spans_per_command: int,
        follows_parent: bool = False,
    ) -> None:
        self.tracer = tracer
        self.records = not isinstance(tracer, NoOpTracer)
        self.follows_parent = follows_parent
        self.command_exchange = command_exchange
        self.event_exchange = event_exchange
        self.spans_per_command = spans_per_command
        self.process_span_name = f"process {command_exchange}"
        self.publish_span_name = f"publish {event_exchange}"

    def command(self, delivery: Received) -> CommandTrace:
        if not self.records:
            return PassedOn.of(delivery.headers)
        if self.follows_parent:
            passed = PassedOn.of(delivery.headers)
            if isinstance(passed, PassedOn) and passed.trace_id is not None and not passed.sampled:
                return passed
        parent = extract(delivery.headers)
        message_id = delivery.message_id
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
        return CommandSpan(self, span, parent, message_id)

    def store_call(self, operation: str) -> _StoreCall:
        return _StoreCall(self, operation)

    def retried(self, step: str, reason: str) -> None:
        command = _CURRENT.get()
        if command is not None:
            command.retried(step, reason)

    def exemplar(self) -> dict[str, str] | None:
        command = _CURRENT.get()
        return command.exemplar() if command is not None else None


_Command = CommandSpan | PassedOn
#: The command whose trace is current in this task (and the tasks it starts).
_CURRENT: ContextVar[_Command | None] = ContextVar("livekit_signaling_command_span", default=None)


def current_command() -> _Command | None:
    return _CURRENT.get()


def current_trace_ids() -> tuple[str, str] | None:
    """The trace and span ids of the command handled in this task, for its log lines."""
    command = _CURRENT.get()
    return command.trace_ids() if command is not None else None
