"""The OpenTelemetry SDK as the standard ``OTEL_*`` variables configure it (read and checked by
``app.settings``, which documents each): off, propagation only, or spans exported over OTLP/HTTP
(protobuf) or printed.

The service's own tracer provider, not the process-global one: nothing else in the process (libraries
with instrumentation of their own) starts recording because the service does.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import aiohttp
from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import NoOpTracer

from livekit_signaling.telemetry.tracing.http_client import livekit_trace_config
from livekit_signaling.telemetry.tracing.kept import ControllerTraces, KeptTraces
from livekit_signaling.telemetry.tracing.port import NO_TRACING, Tracing
from livekit_signaling.telemetry.tracing.spans import OpenTelemetryTracing

log = logging.getLogger(__name__)

EXPORTERS = ("otlp", "console", "none")
SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
#: The one OTLP protocol the service ships an exporter for (the Collector's port 4318).
OTLP_PROTOCOL = "http/protobuf"
INSTRUMENTATION_SCOPE = "livekit_signaling"


@dataclass(frozen=True, kw_only=True)
class TracingConfig:
    """What the ``OTEL_*`` settings ask for, resolved (``app.settings.Settings.tracing``)."""

    #: ``OTEL_SDK_DISABLED``: no spans and no propagation.
    disabled: bool = False
    service_name: str = "livekit-signaling"
    resource_attributes: Mapping[str, str] = field(default_factory=dict)
    exporter: str = "none"
    #: The full URL spans are posted to (``.../v1/traces``).
    otlp_endpoint: str = "http://localhost:4318/v1/traces"
    #: Headers of every export request; not in ``repr``, they may hold an API key.
    otlp_headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    sampler: str = "parentbased_always_on"
    sampler_arg: float | None = None
    spans_per_command: int = 32

    def describe(self) -> str:
        """For the start-up log line; never the headers (they may hold an API key)."""
        if self.disabled:
            return "off (OTEL_SDK_DISABLED)"
        if self.exporter == "none":
            return "propagation only (OTEL_TRACES_EXPORTER=none)"
        target = self.otlp_endpoint if self.exporter == "otlp" else "stdout"
        return f"{self.exporter} to {target}, sampler {self.sampler}"


def sampler(name: str, arg: float | None) -> Sampler:
    ratio = TraceIdRatioBased(1.0 if arg is None else arg)
    return {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "traceidratio": ratio,
        "parentbased_always_on": ParentBased(ALWAYS_ON),
        "parentbased_always_off": ParentBased(ALWAYS_OFF),
        "parentbased_traceidratio": ParentBased(ratio),
    }[name]


def _exporter(config: TracingConfig) -> SpanExporter | None:
    if config.exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=config.otlp_endpoint, headers=dict(config.otlp_headers))
    if config.exporter == "console":
        return ConsoleSpanExporter(service_name=config.service_name)
    return None


@dataclass
class TracingSetup:
    """The service's tracing, set up: the port the seams call, the trace configs of the LiveKit
    client's session, and (``dev``) the spans kept for the console."""

    tracing: Tracing
    http_trace_configs: list[aiohttp.TraceConfig]
    provider: TracerProvider | None = None
    kept: KeptTraces | None = None

    def controller_traces(self, *, command_exchange: str) -> ControllerTraces | None:
        """For the dev console (``keep_for_console``): its commands' traces, None otherwise."""
        if self.provider is None or self.kept is None:
            return None
        tracer = self.provider.get_tracer("livekit_signaling.console")
        return ControllerTraces(tracer, self.kept, command_exchange=command_exchange)

    def shutdown(self) -> None:
        """Export what is left (bounded by the exporter's own timeout). Blocking: run it in a thread."""
        if self.provider is not None:
            self.provider.shutdown()


def start_tracing(
    config: TracingConfig,
    *,
    command_exchange: str,
    event_exchange: str,
    instance: str,
    version: str,
    keep_for_console: bool = False,
) -> TracingSetup:
    """Set up tracing as ``config`` says; ``keep_for_console`` (``dev``) records spans even without an
    exporter and keeps the latest traces' spans in memory."""
    if config.disabled:
        return TracingSetup(NO_TRACING, [])
    exporter = _exporter(config)
    provider: TracerProvider | None = None
    kept: KeptTraces | None = None
    if exporter is not None or keep_for_console:
        provider = TracerProvider(
            sampler=sampler(config.sampler, config.sampler_arg),
            resource=Resource.create(
                {
                    **config.resource_attributes,
                    SERVICE_NAME: config.service_name,
                    SERVICE_INSTANCE_ID: instance,
                    SERVICE_VERSION: version,
                }
            ),
        )
        if exporter is not None:
            provider.add_span_processor(BatchSpanProcessor(exporter))
        if keep_for_console:
            kept = KeptTraces()
            provider.add_span_processor(kept)
    tracing = OpenTelemetryTracing(
        provider.get_tracer(INSTRUMENTATION_SCOPE, version) if provider is not None else NoOpTracer(),
        command_exchange=command_exchange,
        event_exchange=event_exchange,
        spans_per_command=config.spans_per_command,
        follows_parent=config.sampler.startswith("parentbased_"),
    )
    return TracingSetup(tracing, [livekit_trace_config(tracing)], provider, kept)
