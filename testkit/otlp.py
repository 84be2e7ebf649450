"""An OpenTelemetry Collector's OTLP/HTTP traces receiver, as small as a test needs: ``POST /v1/traces``
with a protobuf ``ExportTraceServiceRequest`` (gzip or not), parsed with opentelemetry-proto's generated
classes and answered with an empty ``ExportTraceServiceResponse``, as a Collector does.

In a test it runs in a thread of the test process (``OtlpReceiver``); the benchmark runs it as a process
of its own (``OtlpReceiverProcess``: ``python -m testkit.otlp``), which prints ``LISTENING <url>``, counts
the spans (``GET /spans``) and prints their number at SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from testkit.processes import LOG_DIR, stop_process

TRACES_PATH = "/v1/traces"


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, kind) if kind is not None else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs if isinstance(pair, KeyValue)}


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as it arrived: ids as lower-case hex, as ``traceparent`` writes them."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: str
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]
    error: str | None
    service: str
    start: int
    end: int

    def everything_said(self) -> list[tuple[str, str]]:
        """Every attribute of the span and of its events, as (key, text): what a secret must not be in."""
        said = [(key, str(value)) for key, value in self.attributes.items()]
        for name, attributes in self.events:
            said.append(("event", name))
            said += [(key, str(value)) for key, value in attributes.items()]
        return said


def spans_of(request: ExportTraceServiceRequest) -> list[ReceivedSpan]:
    spans = []
    for resource_spans in request.resource_spans:
        service = str(_attributes(resource_spans.resource.attributes).get("service.name", ""))
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                failed = span.status.code == Status.STATUS_CODE_ERROR
                spans.append(
                    ReceivedSpan(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_id=span.parent_span_id.hex() or None,
                        name=span.name,
                        kind=Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_").lower(),
                        attributes=_attributes(span.attributes),
                        events=[(event.name, _attributes(event.attributes)) for event in span.events],
                        error=(span.status.message or "error") if failed else None,
                        service=service,
                        start=span.start_time_unix_nano,
                        end=span.end_time_unix_nano,
                    )
                )
    return spans


@dataclass
class _Received:
    spans: list[ReceivedSpan] = field(default_factory=list)
    requests: int = 0
    changed: threading.Condition = field(default_factory=threading.Condition)
    #: Only count spans (the benchmark's receiver: parsing each span's attributes would cost more).
    count_only: bool = False
    counted: int = 0


class _Handler(BaseHTTPRequestHandler):
    received: _Received

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        if self.path != TRACES_PATH:
            self.send_error(404)
            return
        request = ExportTraceServiceRequest.FromString(body)
        received = self.received
        with received.changed:
            received.requests += 1
            if received.count_only:
                received.counted += sum(
                    len(scope.spans) for resource in request.resource_spans for scope in resource.scope_spans
                )
            else:
                received.spans += spans_of(request)
            received.changed.notify_all()
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def do_GET(self) -> None:
        """``/spans``: how many spans arrived so far (for a benchmark counting them from outside)."""
        if self.path != "/spans":
            self.send_error(404)
            return
        received = self.received
        with received.changed:
            answer = json.dumps(
                {"spans": received.counted + len(received.spans), "requests": received.requests}
            ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class OtlpReceiver:
    """The receiver on a free loopback port, in a thread; ``endpoint`` is what ``OTEL_EXPORTER_OTLP_
    ENDPOINT`` takes (the exporter appends ``/v1/traces``)."""

    def __init__(self, *, count_only: bool = False, port: int = 0) -> None:
        self._received = _Received(count_only=count_only)
        handler = type("Handler", (_Handler,), {"received": self._received})
        self._server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-receiver", daemon=True)

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def spans(self) -> list[ReceivedSpan]:
        with self._received.changed:
            return list(self._received.spans)

    @property
    def span_count(self) -> int:
        with self._received.changed:
            return self._received.counted + len(self._received.spans)

    def wait_for(
        self, predicate: Callable[[list[ReceivedSpan]], bool], timeout: float = 10.0
    ) -> list[ReceivedSpan]:
        """Blocks until the spans received so far satisfy ``predicate`` (returns them), or fails with
        what did arrive. Call it through ``asyncio.to_thread`` from a test's event loop."""
        deadline = time.monotonic() + timeout
        with self._received.changed:
            while not predicate(self._received.spans):
                left = deadline - time.monotonic()
                if left <= 0:
                    names = [(s.name, s.trace_id) for s in self._received.spans]
                    raise AssertionError(f"spans not received within {timeout}s; got {names}")
                self._received.changed.wait(left)
            return list(self._received.spans)

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [span for span in self.spans if span.trace_id == trace_id]


class OtlpReceiverProcess:
    """The receiver as a process of its own, counting spans: its parsing is not counted as the CPU of
    the process under measurement, nor of the load generator."""

    def __init__(self, *, log_dir: Path = LOG_DIR) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self._log = (log_dir / "otlp-receiver.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "testkit.otlp"], stdout=subprocess.PIPE, stderr=self._log
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode().strip()
        if not line.startswith("LISTENING "):
            self.process.kill()
            raise RuntimeError(f"OTLP receiver did not start: {line!r}")
        #: What ``OTEL_EXPORTER_OTLP_ENDPOINT`` takes.
        self.endpoint = line.removeprefix("LISTENING ")

    def spans(self) -> int:
        """Spans received so far."""
        with urllib.request.urlopen(f"{self.endpoint}/spans", timeout=5) as response:  # noqa: S310 - loopback
            return int(json.loads(response.read())["spans"])

    async def settled(self, *, quiet_seconds: float = 1.0, timeout: float = 60.0) -> int:
        """The count once no span arrived for ``quiet_seconds`` (keep the exporter's
        ``OTEL_BSP_SCHEDULE_DELAY`` well below that)."""
        deadline = time.monotonic() + timeout
        count = await asyncio.to_thread(self.spans)
        while time.monotonic() < deadline:
            await asyncio.sleep(quiet_seconds)
            now = await asyncio.to_thread(self.spans)
            if now == count:
                return count
            count = now
        return count

    def stop(self) -> None:
        stop_process(self.process, timeout=10)
        self._log.close()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m testkit.otlp", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--parse", action="store_true", help="parse every span (default: count them)")
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with OtlpReceiver(count_only=not args.parse, port=args.port) as receiver:
        sys.stdout.write(f"LISTENING {receiver.endpoint}\n")
        sys.stdout.flush()
        # With a timeout: a wait without one is not woken by the signal handler's set().
        while not stop.wait(0.2):
            pass
        sys.stdout.write(f"SPANS {receiver.span_count}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
