"""The latest traces' finished spans, kept in process memory for the dev console's waterfall (``dev``
only): a span processor beside the exporter, bounded by traces and by spans per trace; and the console's
own span, as a controller's, at the root of each command it sends."""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from opentelemetry import context as context_api
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import (
    SpanKind,
    Status,
    StatusCode,
    Tracer,
    format_span_id,
    format_trace_id,
    set_span_in_context,
)

from livekit_signaling.telemetry.tracing.carrier import NO_CONTEXT

#: Traces kept (the console keeps as many sent commands).
TRACES = 200
#: Spans kept per trace; a command's own are bounded by its span budget anyway.
SPANS_PER_TRACE = 100


@dataclass(frozen=True, slots=True)
class KeptSpan:
    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: str
    #: Nanoseconds since the epoch.
    start: int
    end: int
    #: The status description when the span failed.
    error: str | None


def kept(span: ReadableSpan) -> KeptSpan:
    context = span.context
    assert context is not None
    failed = span.status.status_code is StatusCode.ERROR
    return KeptSpan(
        trace_id=format_trace_id(context.trace_id),
        span_id=format_span_id(context.span_id),
        parent_id=format_span_id(span.parent.span_id) if span.parent is not None else None,
        name=span.name,
        kind=span.kind.name.lower(),
        start=span.start_time or 0,
        end=span.end_time or span.start_time or 0,
        error=(span.status.description or "error") if failed else None,
    )


class KeptTraces(SpanProcessor):
    """Keeps the spans of the latest ``TRACES`` traces and tells ``on_trace`` (from the thread that
    ended the span) whenever one of them got a span."""

    def __init__(self) -> None:
        self._traces: OrderedDict[str, list[KeptSpan]] = OrderedDict()
        self._lock = threading.Lock()
        self.on_trace: Callable[[str], None] = lambda _trace_id: None

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        record = kept(span)
        with self._lock:
            spans = self._traces.get(record.trace_id)
            if spans is None:
                spans = self._traces[record.trace_id] = []
                while len(self._traces) > TRACES:
                    self._traces.popitem(last=False)
            if len(spans) < SPANS_PER_TRACE:
                spans.append(record)
        self.on_trace(record.trace_id)

    def trace(self, trace_id: str) -> list[KeptSpan]:
        """The trace's finished spans, in the order they started."""
        with self._lock:
            spans = list(self._traces.get(trace_id, ()))
        return sorted(spans, key=lambda span: span.start)

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class ControllerTraces:
    """The dev console as an instrumented controller: a producer span per command it publishes (the root
    of the command's trace, its context in the command's headers), and the spans of those traces as
    ``KeptTraces`` keeps them."""

    def __init__(self, tracer: Tracer, kept: KeptTraces, *, command_exchange: str) -> None:
        self._tracer = tracer
        self._kept = kept
        self._exchange = command_exchange

    @contextlib.contextmanager
    def publishing(self, routing_key: str, message_id: str) -> Iterator[str]:
        """The producer span around the publish of one command, current inside: the client publishes
        its context with the command (``transport.controller``). Yields the trace id."""
        span = self._tracer.start_span(
            f"publish {self._exchange}",
            NO_CONTEXT,
            SpanKind.PRODUCER,
            {
                "messaging.system": "rabbitmq",
                "messaging.operation.type": "send",
                "messaging.operation.name": "publish",
                "messaging.destination.name": f"{self._exchange}:{routing_key}",
                "messaging.rabbitmq.destination.routing_key": routing_key,
                "messaging.message.id": message_id,
            },
        )
        token = context_api.attach(set_span_in_context(span, NO_CONTEXT))
        try:
            yield format_trace_id(span.get_span_context().trace_id)
        except BaseException as error:
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            raise
        finally:
            context_api.detach(token)
            span.end()

    def spans(self, trace_id: str) -> list[KeptSpan]:
        return self._kept.trace(trace_id)

    def on_trace(self, callback: Callable[[str], None]) -> None:
        """Call ``callback`` with the trace id whenever one of the kept traces got a span."""
        self._kept.on_trace = callback
