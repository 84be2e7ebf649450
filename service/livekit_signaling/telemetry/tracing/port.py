"""The tracing port: what the command pipeline, the state store and the LiveKit adapter call at their few
seams, and ``NO_TRACING``, which stands in when tracing is off (``OTEL_SDK_DISABLED=true``).

Nothing here imports OpenTelemetry. The no-op answers every call with a shared object and allocates
nothing, so a seam costs one method call per command when tracing is off. The OpenTelemetry
implementation is ``spans.OpenTelemetryTracing``; docs/operations/tracing.md says what it records.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Protocol


class Received(Protocol):
    """A command as it came off the broker (``pipeline.ports.Delivery``)."""

    @property
    def headers(self) -> Mapping[str, object]: ...

    @property
    def routing_key(self) -> str: ...

    @property
    def message_id(self) -> str | None: ...

    @property
    def delivery_count(self) -> int: ...


class Addressed(Protocol):
    """An outgoing message as a publication span describes it (``pipeline.ports.OutgoingEvent``)."""

    @property
    def routing_key(self) -> str: ...

    @property
    def message_id(self) -> str: ...


class TraceSpan(Protocol):
    """A span a seam may annotate. Reasons are labels or error type names, never a payload."""

    def retried(self, step: str, reason: str) -> None:
        """A retry of ``step``, as a span event."""

    def failed(self, reason: str) -> None:
        """The span's status becomes an error with this description."""


class CommandTrace(TraceSpan, Protocol):
    """One command's consumer span, from its delivery until it is settled."""

    @property
    def event_headers(self) -> dict[str, str] | None:
        """The trace headers of the command's events (``traceparent``, ``tracestate``, ``baggage``): one
        dict shared by all of them, filled when ``publication`` starts; None when it is not traced."""

    def activate(self, room: str | None) -> AbstractContextManager[None]:
        """The span is the current one inside: child spans, the context sent to LiveKit and log lines
        belong to it. ``room`` is the envelope's (None when it did not decode)."""

    def publication(self, events: Sequence[Addressed]) -> AbstractContextManager[TraceSpan]:
        """The producer span of the command's events, from before the first is handed to the channel
        until the last confirm; its context goes into ``event_headers``. Ends with an error status when
        the block raises."""

    def settled(self, action: str, outcome: str) -> None:
        """How the command ended (the ``commands_total`` labels)."""

    def exemplar(self) -> dict[str, str] | None:
        """``{"trace_id": ...}`` for a latency histogram's exemplar, or None."""

    def end(self) -> None: ...


class Tracing(Protocol):
    """Makes command traces, and annotates whatever command runs in the current task."""

    def command(self, delivery: Received) -> CommandTrace:
        """Start a command's consumer span under the context its AMQP headers carry (a trace of its own
        when they carry none)."""

    def store_call(self, operation: str) -> AbstractContextManager[None]:
        """A client span for one state-store round trip of the current command."""

    def retried(self, step: str, reason: str) -> None:
        """A retry within the current command, as an event on its span."""

    def exemplar(self) -> dict[str, str] | None:
        """The current command's exemplar (see ``CommandTrace.exemplar``)."""


class _Nothing:
    """The no-op of every protocol above, one shared instance."""

    __slots__ = ()

    #: Commands carry no trace headers.
    event_headers = None

    def command(self, delivery: Received) -> _Nothing:
        return self

    def activate(self, room: str | None) -> AbstractContextManager[None]:
        return _NO_BLOCK

    def publication(self, events: Sequence[Addressed]) -> AbstractContextManager[_Nothing]:
        return _NO_PUBLICATION

    def store_call(self, operation: str) -> AbstractContextManager[None]:
        return _NO_BLOCK

    def retried(self, step: str, reason: str) -> None:
        pass

    def failed(self, reason: str) -> None:
        pass

    def settled(self, action: str, outcome: str) -> None:
        pass

    def exemplar(self) -> dict[str, str] | None:
        return None

    def end(self) -> None:
        pass


NO_TRACING = _Nothing()
#: The command trace of a command that is not traced.
NO_COMMAND_TRACE: CommandTrace = NO_TRACING
_NO_BLOCK: AbstractContextManager[None] = contextlib.nullcontext()
_NO_PUBLICATION: AbstractContextManager[_Nothing] = contextlib.nullcontext(NO_TRACING)
