"""The latest traces' finished spans, kept in process memory for the dev console's waterfall (``dev``
only): a span processor beside the exporter, bounded by traces and by spans per trace."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import StatusCode, format_span_id, format_trace_id

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
