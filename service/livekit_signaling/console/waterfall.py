"""A sent command's trace as the page draws it: its spans in tree order (each under its parent, siblings
by start), with their depth, start and duration in milliseconds from the trace's first start."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from livekit_signaling.console.views import TraceSpanView
from livekit_signaling.telemetry.tracing.kept import KeptSpan

_NS_PER_MS = 1_000_000


def waterfall(spans: Sequence[KeptSpan]) -> list[TraceSpanView]:
    """A span whose parent is not among ``spans`` (the root, or one whose parent was not kept) starts a
    tree of its own."""
    if not spans:
        return []
    ids = {span.span_id for span in spans}
    children: defaultdict[str | None, list[KeptSpan]] = defaultdict(list)
    for span in sorted(spans, key=lambda span: span.start):
        children[span.parent_id if span.parent_id in ids else None].append(span)
    origin = min(span.start for span in spans)
    rows: list[TraceSpanView] = []

    def visit(parent: str | None, depth: int) -> None:
        for span in children.get(parent, ()):
            rows.append(
                TraceSpanView(
                    name=span.name,
                    kind=span.kind,
                    depth=depth,
                    start_ms=round((span.start - origin) / _NS_PER_MS, 3),
                    duration_ms=round((span.end - span.start) / _NS_PER_MS, 3),
                    error=span.error,
                )
            )
            visit(span.span_id, depth + 1)

    visit(None, 0)
    return rows
