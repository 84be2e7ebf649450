"""Traces across the bus: W3C trace context in and out of AMQP headers and LiveKit calls, and the spans
of a command (docs/operations/tracing.md). The seams see only the port; ``setup`` builds the rest."""

from livekit_signaling.telemetry.tracing.port import (
    NO_COMMAND_TRACE,
    NO_TRACING,
    CommandTrace,
    TraceSpan,
    Tracing,
)

__all__ = ["NO_COMMAND_TRACE", "NO_TRACING", "CommandTrace", "TraceSpan", "Tracing"]
