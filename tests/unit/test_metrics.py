"""``Children``: a labelled metric's children looked up once, counting into the same series as
``labels()``."""

from __future__ import annotations

from livekit_signaling.telemetry.metrics import Children, Metrics


def test_children_count_into_the_series_labels_would() -> None:
    metrics = Metrics()
    counts = Children(metrics.commands)
    counts("join", "ok").inc()
    counts("join", "ok").inc()
    counts("join", "duplicate").inc()
    assert counts("join", "ok") is counts("join", "ok")
    sample = metrics.registry.get_sample_value
    assert sample("livekit_signaling_commands_total", {"action": "join", "outcome": "ok"}) == 2
    assert sample("livekit_signaling_commands_total", {"action": "join", "outcome": "duplicate"}) == 1
    durations = Children(metrics.command_duration)
    durations("join").observe(0.003)
    assert sample("livekit_signaling_command_duration_seconds_count", {"action": "join"}) == 1
