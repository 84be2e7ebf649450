"""Client spans for LiveKit's Twirp calls, as an ``aiohttp.TraceConfig`` on the LiveKit adapter's session
(``livekit-api`` takes the session it is given, unmodified).

One span per call, named after the Twirp method (``POST /twirp/livekit.RoomService/UpdateParticipant``,
the path being the low-cardinality ``url.template`` of the HTTP conventions), with the context injected
into the request's headers so that LiveKit sees the trace. No request or response header is recorded:
the ``Authorization`` header carries an access token. Calls beyond the command's span budget
(``spans.py``) get the command span's context and no span of their own; a failed one is an event on the
command span.

Not opentelemetry-instrumentation-aiohttp-client: under its suppression (the only way to skip a span)
it injects no context either, so a bounded fan-out's calls would reach LiveKit without the trace; and
it records HTTP metrics through the metrics API, which this service does not use.
"""

from __future__ import annotations

from types import SimpleNamespace

import aiohttp
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from yarl import URL

from livekit_signaling.telemetry.tracing.carrier import inject
from livekit_signaling.telemetry.tracing.spans import (
    ERROR_TYPE,
    CommandSpan,
    OpenTelemetryTracing,
    current_command,
)


def _call_attributes(method: str, url: URL) -> dict[str, str | int]:
    return {
        "http.request.method": method,
        "server.address": url.host or "",
        "server.port": url.port or 0,
        "url.full": str(url.with_user(None).with_query(None).with_fragment(None)),
        "url.template": url.path,
    }


def livekit_trace_config(tracing: OpenTelemetryTracing) -> aiohttp.TraceConfig:
    """Spans and context for the calls of the current command; calls outside a command (webhook
    re-checks) carry no context and get no span."""
    tracer = tracing.tracer

    async def on_request_start(
        _session: aiohttp.ClientSession, call: SimpleNamespace, params: aiohttp.TraceRequestStartParams
    ) -> None:
        call.span = None
        call.command = command = current_command()
        if command is None:
            return
        if not command.take_span():
            command.propagate(params.headers)
            return
        assert isinstance(command, CommandSpan)  # only a recorded command has a span budget
        url, method = params.url, params.method
        call.span = span = tracer.start_span(
            f"{method} {url.path}", command.context, SpanKind.CLIENT, _call_attributes(method, url)
        )
        inject(trace.set_span_in_context(span, command.context), params.headers)

    async def on_request_end(
        _session: aiohttp.ClientSession, call: SimpleNamespace, params: aiohttp.TraceRequestEndParams
    ) -> None:
        status = params.response.status
        span = call.span
        if span is not None:
            span.set_attribute("http.response.status_code", status)
            if status >= 400:  # a client span fails on 4xx as on 5xx (HTTP conventions)
                span.set_attribute(ERROR_TYPE, str(status))
                span.set_status(Status(StatusCode.ERROR))
            span.end()
        elif status >= 400 and call.command is not None:
            call.command.call_failed({"url.template": params.url.path, "http.response.status_code": status})

    async def on_request_exception(
        _session: aiohttp.ClientSession, call: SimpleNamespace, params: aiohttp.TraceRequestExceptionParams
    ) -> None:
        error = type(params.exception).__qualname__
        span = call.span
        if span is not None:
            span.set_attribute(ERROR_TYPE, error)
            span.set_status(Status(StatusCode.ERROR, error))
            span.end()
        elif call.command is not None:
            call.command.call_failed({"url.template": params.url.path, ERROR_TYPE: error})

    config = aiohttp.TraceConfig()
    config.on_request_start.append(on_request_start)
    config.on_request_end.append(on_request_end)
    config.on_request_exception.append(on_request_exception)
    return config
