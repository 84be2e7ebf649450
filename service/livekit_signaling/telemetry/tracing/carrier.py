"""W3C Trace Context (``traceparent``, ``tracestate``) and W3C Baggage (``baggage``) in AMQP message
headers, as opentelemetry-instrumentation-aio-pika and FastStream write them: one string header each."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping

from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

#: The propagators the service reads and writes, whatever ``OTEL_PROPAGATORS`` says: the W3C formats
#: are what the AMQP instrumentations of other languages and frameworks use too.
PROPAGATOR = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])
#: The headers they use; a message with none of them is not parsed at all.
TRACE_HEADERS = frozenset(PROPAGATOR.fields)
#: The context of a command that carries none: its consumer span starts a trace of its own.
NO_CONTEXT = Context()


class _AmqpHeaders(Getter[Mapping[str, object]]):
    """Header values as the AMQP client hands them over: ``str``, or ``bytes`` for a long string that
    is not UTF-8 clean; anything else (a number, a table) is not a trace header."""

    def get(self, carrier: Mapping[str, object], key: str) -> list[str] | None:
        value = carrier.get(key)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        return [value] if isinstance(value, str) else None

    def keys(self, carrier: Mapping[str, object]) -> list[str]:
        return list(carrier)


_GETTER = _AmqpHeaders()


def extract(headers: Mapping[str, object]) -> Context:
    """The context a message's headers carry (an empty one without trace headers)."""
    if TRACE_HEADERS.isdisjoint(headers):
        return NO_CONTEXT
    return PROPAGATOR.extract(headers, context=NO_CONTEXT, getter=_GETTER)


def inject(context: Context, headers: MutableMapping[str, str]) -> None:
    """Write ``context`` into ``headers`` (an AMQP header table, or an HTTP request's headers)."""
    PROPAGATOR.inject(headers, context=context)


def current_headers() -> dict[str, str] | None:
    """The headers of a message published now, under the current span (as an instrumented publisher
    writes them); None when there is no context to pass on."""
    headers: dict[str, str] = {}
    PROPAGATOR.inject(headers)
    return headers or None
