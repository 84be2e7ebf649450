"""Structured logs: JSON lines (or readable text on a terminal), with the command's identifying fields
(room, participant, action, message id) on every line logged while it is handled, and the ids of the
trace and span it is handled in (``trace_id``, ``span_id``), to go from a line to its trace."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from contextvars import ContextVar, Token
from typing import Any

from opentelemetry import trace

from livekit_signaling.telemetry.tracing.spans import current_trace_ids

_command_context: ContextVar[dict[str, str] | None] = ContextVar("command_log_context", default=None)
_CONTEXT_FIELDS = ("room", "participant", "action", "message_id", "trace_id", "span_id")
#: The ``user:password@`` of a URL. aiormq names a connection by its URL in its own error lines (the
#: password masked, the user name not); our lines name nodes as host:port/vhost. Dropped from every line.
_URL_CREDENTIALS = re.compile(r"(?<=://)[^/@\s\"']+@")


def without_credentials(text: str) -> str:
    return _URL_CREDENTIALS.sub("", text)


class command_context:
    """Every log line inside carries these fields (tasks started inside inherit them). A class rather
    than a ``@contextmanager`` generator: it is entered for every command."""

    __slots__ = ("_fields", "_token")

    def __init__(self, **fields: str | None) -> None:
        self._fields = fields
        self._token: Token[dict[str, str] | None] | None = None

    def __enter__(self) -> None:
        outer = _command_context.get()
        current = dict(outer) if outer else {}
        for key, value in self._fields.items():
            if value is not None:
                current[key] = value
        self._token = _command_context.set(current)

    def __exit__(self, *_: object) -> None:
        if self._token is not None:
            _command_context.reset(self._token)
            self._token = None


def update_command_context(**fields: str | None) -> None:
    current = _command_context.get()
    if current is not None:
        current.update({key: value for key, value in fields.items() if value is not None})


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_command_context.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        if not hasattr(record, "trace_id"):
            ids = _trace_ids()
            if ids is not None:
                record.trace_id, record.span_id = ids
        return True


def _trace_ids() -> tuple[str, str] | None:
    """The command's trace and span (in propagation only mode: the controller's span it came with), or
    else the current OpenTelemetry span's (the dev console's own spans)."""
    ids = current_trace_ids()
    if ids is not None:
        return ids
    span = trace.get_current_span().get_span_context()
    if not span.is_valid:
        return None
    return trace.format_trace_id(span.trace_id), trace.format_span_id(span.span_id)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": without_credentials(record.getMessage()),
        }
        for key in _CONTEXT_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                line[key] = value
        if record.exc_info:
            line["exception"] = without_credentials(self.formatException(record.exc_info))
        return json.dumps(line, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = without_credentials(super().format(record))
        context = " ".join(
            f"{key}={getattr(record, key)}" for key in _CONTEXT_FIELDS if getattr(record, key, None)
        )
        return f"{text} [{context}]" if context else text


def configure_logging(log_format: str, level: str) -> None:
    use_json = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    handler.addFilter(_ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
