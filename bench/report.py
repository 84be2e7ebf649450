"""The figures as a terminal table with targets, as JSON, and the latency distribution of W2 as a PNG."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KIB = 1024


@dataclass(frozen=True)
class Row:
    workload: str
    figure: str
    service: float | None
    baseline: float | None
    unit: str
    target: str = ""
    passed: bool | None = None
    #: False for a row whose figures are already ratios (service and baseline each against itself).
    comparable: bool = True

    @property
    def ratio(self) -> float | None:
        if not self.comparable or self.service is None or self.baseline is None or self.baseline == 0:
            return None
        return self.service / self.baseline


def _get(results: dict[str, Any], workload: str, side: str, key: str) -> float | None:
    value = results.get(workload, {}).get(side, {}).get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def _complete(results: dict[str, Any], workload: str) -> bool:
    sides = results.get(workload, {})
    return all(side.get("complete", True) for side in sides.values() if isinstance(side, dict))


#: Other processes busier than this (cores) during a workload mark its figures as disturbed.
DISTURBED = 0.25


def disturbed(results: dict[str, Any], workload: str) -> bool:
    sides = results.get(workload, {})
    return any(side.get("other_processes_cores", 0) > DISTURBED for side in sides.values())


class _Rows:
    """The rows of one results document being built: `add` takes a figure's service and baseline values."""

    def __init__(self, results: dict[str, Any]) -> None:
        self.results = results
        self.out: list[Row] = []

    def add(self, workload: str, label: str, figure: str, key: str, unit: str, **kwargs: Any) -> None:
        service = _get(self.results, workload, "service", key)
        baseline = _get(self.results, workload, "baseline", key)
        self.out.append(Row(label, figure, service, baseline, unit, **kwargs))

    def label(self, workload: str, text: str) -> str:
        """The workload's first row's label, marked when other processes disturbed it."""
        return text + (" *" if disturbed(self.results, workload) else "")


def rows(results: dict[str, Any]) -> list[Row]:
    """One row per figure, with its target (bench/README.md's "Target" column) evaluated."""
    built = _Rows(results)
    add, label, out = built.add, built.label, built.out

    def both(workload: str, key: str) -> tuple[float | None, float | None]:
        return _get(results, workload, "service", key), _get(results, workload, "baseline", key)

    if "w1" in results:
        s, b = both("w1", "commands_per_second")
        ok = s is not None and b is not None and s >= 0.7 * b and _complete(results, "w1")
        n = int(_get(results, "w1", "service", "commands") or 0)
        add("w1", label("w1", f"W1 create_new_access_token ({n:,})"), "throughput", "commands_per_second",
            "cmd/s", target=">= 0.7x", passed=ok)  # fmt: skip
        add("w1", "W1", "CPU per 1,000 commands", "cpu_seconds_per_1000", "CPU s")
    for key, what in (("w2", "half the baseline's max"), ("w2b", "half the service's max, no target")):
        if key not in results:
            continue
        rate = _get(results, key, "service", "offered_rate") or 0
        name = key.upper().replace("B", "b")
        add(key, label(key, f"{name} latency @ {rate:,.0f} cmd/s"), f"p50 ({what})", "p50_ms", "ms")
        add(key, name, "p95", "p95_ms", "ms")
        s, b = both(key, "p99_ms")
        if key == "w2":
            ok = s is not None and b is not None and s <= 2 * b and s < 25 and _complete(results, key)
            add(key, name, "p99", "p99_ms", "ms", target="<= 2x and < 25 ms", passed=ok)
        else:
            add(key, name, "p99", "p99_ms", "ms")
        add(key, name, "max", "max_ms", "ms")
    if "w3" in results:
        s, b = both("w3", "seconds")
        ok = s is not None and b is not None and s <= 1.5 * b and _complete(results, "w3")
        n = int(_get(results, "w3", "service", "joins") or 0)
        add("w3", label("w3", f"W3 join storm ({n:,})"), "time to last event", "seconds", "s",
            target="<= 1.5x", passed=ok)  # fmt: skip
    if "w4" in results:
        s = _get(results, "w4", "service", "seconds")
        verified = bool(results["w4"].get("service", {}).get("livekit_verified"))
        ok = s is not None and s < 1 and verified and _complete(results, "w4")
        n = int(_get(results, "w4", "service", "participants") or 0)
        add("w4", label("w4", f"W4 fan-out ({n:,})"), "events + LiveKit verified", "seconds", "s",
            target="< 1 s", passed=ok)  # fmt: skip
        add("w4", "W4", "events only", "events_seconds", "s")
    if "w5" in results:
        n = int(_get(results, "w5", "service", "participants") or 0)
        add("w5", label("w5", f"W5 force_mute ({n})"), "events + tracks muted", "seconds", "s")
    if "w6" in results:
        s = _get(results, "w6", "service", "bytes_per_participant")
        ok = s is not None and s < 2 * KIB and _complete(results, "w6")
        n = int(_get(results, "w6", "service", "participants") or 0)
        add("w6", label("w6", f"W6 memory ({n:,} participants)"), "RSS per participant",
            "bytes_per_participant", "B", target="< 2 KiB", passed=ok)  # fmt: skip
        add("w6", "W6", "RSS after start-up", "rss_start_bytes", "B")
    out += large_room_rows(results)
    out += tracing_rows(results)
    return out


def tracing_rows(results: dict[str, Any]) -> list[Row]:
    """W10: each tracing mode against tracing off, in the Service and Baseline columns."""
    if "w10" not in results:
        return []
    w10 = results["w10"]

    def value(mode: str, key: str) -> float | None:
        return _get(results, "w10", mode, key)

    def fan_out(mode: str, key: str) -> float | None:
        figures = w10.get(mode, {}).get("fan_out") or {}
        return float(figures[key]) if key in figures else None

    off = value("off", "cpu_seconds_per_1000")
    n = int(value("off", "commands") or 0)
    name = ("W10 * " if disturbed(results, "w10") else "W10 ") + f"tracing ({n:,} traced commands)"
    exported = value("export", "cpu_seconds_per_1000")
    ok = exported is not None and off is not None and exported <= 1.1 * off and _complete(results, "w10")
    size = int(fan_out("export", "participants") or 0)
    return [
        Row(name, "CPU per 1,000: propagation only / off", value("propagation", "cpu_seconds_per_1000"), off,
            "CPU s"),
        Row("W10", "CPU per 1,000: every span exported / off", exported, off, "CPU s", "<= 1.10x", ok),
        Row("W10", "CPU per 1,000: one trace in ten exported / off",
            value("export_sampled_10", "cpu_seconds_per_1000"), off, "CPU s"),
        Row("W10", "throughput: exported / off", value("export", "commands_per_second"),
            value("off", "commands_per_second"), "cmd/s"),
        Row("W10", "spans per command, exported", value("export", "spans_per_command"), None, ""),
        Row("W10", f"restriction in a room of {size:,}: spans", fan_out("export", "spans"), None, ""),
        Row("W10", f"restriction in a room of {size:,}: CPU exported / off", fan_out("export", "cpu_seconds"),
            fan_out("off", "cpu_seconds"), "CPU s"),
        Row("W10", "pipeline in-process, CPU per command: propagation only / off",
            _get(results, "w10", "in_process", "propagation_us_per_command"),
            _get(results, "w10", "in_process", "off_us_per_command"), "us"),
        Row("W10", "pipeline in-process, CPU per command: every span exported / off",
            _get(results, "w10", "in_process", "export_us_per_command"),
            _get(results, "w10", "in_process", "off_us_per_command"), "us"),
        Row("W10", "pipeline in-process, CPU per command: one trace in ten exported / off",
            _get(results, "w10", "in_process", "export_sampled_10_us_per_command"),
            _get(results, "w10", "in_process", "off_us_per_command"), "us"),
        Row("W10", "no-op seams per command (tracing off)",
            _get(results, "w10", "noop", "seams_ns_per_command"), None, "ns"),
    ]  # fmt: skip


def large_room_rows(results: dict[str, Any]) -> list[Row]:
    """W7-W9, the large rooms. W7 and W8 compare the service with itself (one room against many, the larger
    room against the smaller), so their ratio rows carry the service's ratio and, beside it, the
    baseline's same ratio."""
    built = _Rows(results)
    add, label, out = built.add, built.label, built.out

    if "w7" in results:
        n = int(_get(results, "w7", "service", "joins") or 0)
        rooms = int(_get(results, "w7", "service", "rooms") or 0)
        add("w7", label("w7", f"W7 {n:,} joins over {rooms:,} rooms"), "time to last event",
            "spread_seconds", "s")  # fmt: skip
        add("w7", "W7", "the same into one room", "one_room_seconds", "s")
        ratio = _get(results, "w7", "service", "one_room_over_spread")
        ok = ratio is not None and ratio <= 1.2 and _complete(results, "w7")
        base_ratio = _get(results, "w7", "baseline", "one_room_over_spread")
        out.append(
            Row("W7", "one room / over many rooms", ratio, base_ratio, "x", "<= 1.2", ok, comparable=False)
        )
    if "w8" in results:
        small, large = results["w8"].get("service", {}).get("sizes", [0, 0])
        verified = bool(results["w8"].get("service", {}).get("livekit_verified"))
        for size, key in ((small, "small_seconds"), (large, "large_seconds")):
            s, b = _get(results, "w8", "service", key), _get(results, "w8", "baseline", key)
            ok = s is not None and b is not None and s <= 1.1 * b and verified and _complete(results, "w8")
            name = (
                label("w8", f"W8 restrictions, room of {size:,}") if size == small else f"W8 room of {size:,}"
            )
            add("w8", name, "events + LiveKit verified (baseline: bare loop)", key, "s",
                target="<= 1.1x bare loop", passed=ok)  # fmt: skip
        add("w8", "W8", "events only", "large_events_seconds", "s")
        ratio = _get(results, "w8", "service", "large_over_small")
        ok = ratio is not None and ratio <= large / max(1, small) and _complete(results, "w8")
        base_ratio = _get(results, "w8", "baseline", "large_over_small")
        out.append(Row("W8", f"room of {large:,} / of {small:,}", ratio, base_ratio, "x",
                       f"<= {large / max(1, small):g}x", ok, comparable=False))  # fmt: skip
    if "w9" in results:
        memory, in_redis = results["w9"].get("service", {}), results["w9"].get("service_redis", {})
        n = int(memory.get("participants") or in_redis.get("participants") or 0)
        name = label("w9", f"W9 memory, one room of {n:,}")
        for text, value in (
            ("in-memory store: RSS per participant", memory.get("process_bytes_per_participant")),
            ("Redis store: MEMORY USAGE per participant", in_redis.get("redis_bytes_per_participant")),
            ("Redis store: RSS per participant", in_redis.get("process_bytes_per_participant")),
            ("Redis store: processed id per command", in_redis.get("redis_processed_bytes_per_command")),
        ):
            out.append(Row(name, text, None if value is None else float(value), None, "B"))
            name = "W9"
    return out


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1e6:
        return f"{value / 2**20:,.1f} Mi"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.4f}"


def table(results: dict[str, Any]) -> str:
    header = ("Workload", "Figure", "Service", "Baseline", "Ratio", "Unit", "Target", "")
    body = [
        (
            r.workload,
            r.figure,
            _fmt(r.service),
            _fmt(r.baseline),
            f"{r.ratio:.2f}x" if r.ratio is not None else "-",
            r.unit,
            r.target,
            "" if r.passed is None else ("PASS" if r.passed else "MISS"),
        )
        for r in rows(results)
    ]
    widths = [max(len(str(line[i])) for line in (header, *body)) for i in range(len(header))]
    right = {2, 3, 4}

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    rule = "  ".join("-" * w for w in widths)
    lines = [line(header), rule, *(line(b) for b in body)]
    if any(r.workload.endswith(" *") for r in rows(results)):
        lines.append(f"* other processes kept > {DISTURBED} cores busy meanwhile: figures disturbed")
    return "\n".join(lines)


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, sort_keys=False, default=str) + "\n")


Timeline = dict[str, list[tuple[float, float]]]


def plot_latency(
    path: Path, panels: list[tuple[str, dict[str, list[float]], Timeline]], caption: str
) -> None:
    """Per row (title, sorted samples by side, (send offset, latency) by side): CDF (log x), tail
    (1 - CDF, log-log) and latency over the run, service against baseline. W2 on the first row; W2b,
    when run, on the second."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    plain = FuncFormatter(lambda value, _: f"{value:g}")

    colors = {"service": "tab:red", "baseline": "tab:blue"}
    fig, axes = plt.subplots(
        len(panels), 3, figsize=(17, 4.4 * len(panels)), squeeze=False, layout="constrained"
    )
    for (title, samples, timeline), (cdf, tail, over_time) in zip(panels, axes, strict=True):
        for name, values in samples.items():
            if not values:
                continue
            ms = sorted(v * 1000 for v in values)
            n = len(ms)
            y = [(i + 1) / n for i in range(n)]
            p50, p99 = ms[max(0, math.ceil(0.5 * n) - 1)], ms[max(0, math.ceil(0.99 * n) - 1)]
            label = f"{name}: p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {ms[-1]:.1f} ms (n={n:,})"
            cdf.plot(ms, y, color=colors.get(name), label=label, linewidth=1.6)
            tail.plot(ms, [max(1 - v, 0.5 / n) for v in y], color=colors.get(name), label=name, linewidth=1.6)
        for ax in (cdf, tail):
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(plain)
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.axvline(25, color="grey", linestyle="--", linewidth=1)
            ax.grid(True, which="both", alpha=0.3)
            ax.set_xlabel("latency, publish -> event received (ms, log scale)")
        cdf.text(25, 0.02, " 25 ms (W2 p99 target)", color="grey", fontsize=8)
        cdf.set_ylabel("fraction of commands")
        cdf.set_ylim(0, 1.0)
        cdf.legend(loc="upper left", fontsize=8)
        cdf.set_title(title, fontsize=10)
        tail.set_yscale("log")
        tail.set_ylabel("fraction slower than x (log)")
        for q in (0.5, 0.05, 0.01):
            tail.axhline(q, color="lightgrey", linewidth=0.8)
            tail.text(tail.get_xlim()[0], q, f" p{100 * (1 - q):g}", fontsize=7, va="bottom", color="grey")
        tail.legend(loc="lower left", fontsize=8)
        tail.set_title("tail of the same", fontsize=10)
        for name, points in timeline.items():
            over_time.scatter(
                [x for x, _ in points], [y * 1000 for _, y in points], s=3, alpha=0.5,
                color=colors.get(name), label=name,
            )  # fmt: skip
        over_time.set_yscale("log")
        over_time.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        over_time.yaxis.set_major_formatter(plain)
        over_time.yaxis.set_minor_formatter(NullFormatter())
        over_time.axhline(25, color="grey", linestyle="--", linewidth=1)
        over_time.set_xlabel("seconds into the run (publish time)")
        over_time.set_ylabel("latency (ms, log scale)")
        over_time.grid(True, which="both", alpha=0.3)
        over_time.legend(loc="upper left", fontsize=8, markerscale=3)
        over_time.set_title("each command over the run", fontsize=10)
    fig.suptitle(f"create_new_access_token latency at a fixed offered rate\n{caption}", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
