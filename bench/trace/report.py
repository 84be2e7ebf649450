"""Where W2's latency goes: ``python -m bench.trace.report [DIR]`` (default ``bench/results/trace``).

Joins the files ``bench/trace/sitecustomize.py`` wrote, by command id, for every W2 run (a load
generator that published at a fixed rate) and prints, per target process, percentiles of:

- broker in:  load generator publish -> the service's processor has the delivery (broker, TCP, aiormq,
  aio-pika's consumer tasks);
- service:    delivery -> its events handed to the transport (decode, room order, state, token);
- broker out: events handed to the transport -> first event at the load generator;
- confirm:    events handed to the transport -> their publisher confirms;

and, for the slowest 1 % of commands, the mean of each part plus the worst event-loop lag, garbage
collection and long callback of the service while they were in flight. For the baseline only the
publish is traced, so "broker in" there is publish -> the baseline's event publish.
"""

from __future__ import annotations

import bisect
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from bench.workloads import percentile

DEFAULT = Path(__file__).resolve().parents[1] / "results" / "trace"


@dataclass
class Process:
    kind: str
    #: command id -> (delivered, started, events handed over, confirmed, acked)
    commands: dict[str, tuple[float, ...]] = field(default_factory=dict)
    lags: list[tuple[float, float]] = field(default_factory=list)
    slow: list[tuple[float, float, str]] = field(default_factory=list)
    collections: list[tuple[float, int, float]] = field(default_factory=list)


def _read_process(path: Path) -> Process:
    process = Process(kind=path.name.split(".", 1)[0])
    for line in path.read_text().splitlines():
        kind, _, rest = line.partition(" ")
        parts = rest.split(" ")
        if kind == "C":
            process.commands[parts[0]] = tuple(float(v) for v in parts[1:])
        elif kind == "P":  # baseline: publish started, confirmed
            started, confirmed = float(parts[1]), float(parts[2])
            process.commands[parts[0]] = (started, started, started, confirmed, confirmed)
        elif kind == "L":
            process.lags.append((float(parts[0]), float(parts[1])))
        elif kind == "S":
            process.slow.append((float(parts[0]), float(parts[1]), " ".join(parts[2:])))
        elif kind == "G":
            process.collections.append((float(parts[0]), int(parts[1]), float(parts[2])))
    return process


def _read_generator(path: Path) -> tuple[float, dict[str, tuple[float, float]]]:
    measured_from, tracks = 0.0, {}
    for line in path.read_text().splitlines():
        key, sent, first = line.split(" ")
        if key == "measured_from":
            measured_from = float(sent)
        else:
            tracks[key] = (float(sent), float(first))
    return measured_from, tracks


def _percentile(values: list[float], q: float) -> float:
    return percentile(sorted(values), q)


def _worst_within(marks: list[tuple[float, float]], start: float, end: float) -> float:
    times = [at for at, _ in marks]
    low, high = bisect.bisect_left(times, start), bisect.bisect_right(times, end)
    return max((marks[i][1] for i in range(max(low - 1, 0), min(high + 1, len(marks)))), default=0.0)


def report(directory: Path) -> str:
    processes: dict[str, list[Process]] = defaultdict(list)
    generators: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(directory.glob("*.txt")):
        kind, queue = path.name.split(".")[0], ".".join(path.name.split(".")[1:-2])
        if kind == "generator":
            generators[queue].append(path)
        elif kind in ("service", "baseline"):
            processes[queue].append(_read_process(path))
    lines: list[str] = []
    for queue, paths in generators.items():
        for generator_path in paths:
            measured_from, tracks = _read_generator(generator_path)
            if not measured_from or not processes.get(queue):
                continue  # not a fixed-rate (W2) run, or its target left no trace
            target = processes[queue][0]
            rows = []
            for command_id, (sent, first) in tracks.items():
                marks = target.commands.get(command_id)
                if sent < measured_from or not first or marks is None:
                    continue
                delivered, _, handed, confirmed, _ = marks
                rows.append(
                    (sent, first, delivered - sent, handed - delivered, first - handed, confirmed - handed)
                )
            if not rows:
                continue
            lines.append(f"{target.kind} {queue}: {len(rows)} commands")
            parts = ("broker in", "service", "broker out", "confirm")
            for index, name in enumerate(parts, start=2):
                values = [row[index] for row in rows]
                figures = "  ".join(f"p{q:g} {_percentile(values, q) * 1000:7.1f}" for q in (50, 90, 99, 100))
                lines.append(f"  {name:<11} {figures}  ms")
            end_to_end = [row[1] - row[0] for row in rows]
            figures = "  ".join(f"p{q:g} {_percentile(end_to_end, q) * 1000:7.1f}" for q in (50, 90, 99, 100))
            lines.append(f"  {'end to end':<11} {figures}  ms")
            worst = sorted(rows, key=lambda row: row[1] - row[0])[-max(1, len(rows) // 100) :]
            means = "  ".join(
                f"{name} {sum(row[i] for row in worst) / len(worst) * 1000:.1f}"
                for i, name in zip((2, 3, 4), parts[:3], strict=True)
            )
            lines.append(f"  slowest 1 % ({len(worst)}): mean ms {means}")
            if target.kind == "service":
                lag = max(_worst_within(target.lags, row[0], row[1]) for row in worst)
                gcs = [
                    (generation, took)
                    for at, generation, took in target.collections
                    if any(row[0] <= at <= row[1] for row in worst)
                ]
                longest = max(
                    (took for at, took, _ in target.slow if any(row[0] <= at <= row[1] for row in worst)),
                    default=0.0,
                )
                gc_text = ", ".join(f"gen{g} {t * 1000:.1f} ms" for g, t in gcs) or "none"
                lines.append(
                    f"  while they were in flight: worst loop lag {lag * 1000:.1f} ms, longest callback "
                    f"{longest * 1000:.1f} ms, collections: {gc_text}"
                )
    return "\n".join(lines) if lines else f"no fixed-rate runs traced in {directory}"


def main() -> int:
    directory = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    print(report(directory))
    return 0


if __name__ == "__main__":
    sys.exit(main())
