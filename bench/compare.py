"""The paired comparison: ``bash bench/run.sh --compare <commit> [--only w1,w8] [--rounds N] [--redis]``.

The given commit's ``service/`` is extracted (``git archive``) into ``build/compare-<sha>/`` beside the
working tree, and each service process imports the package from its own tree through ``PYTHONPATH``
(the working tree's ``service/`` or the extracted one; both run on the same ``.venv``, the same
emulator, broker, load generator and bench code). The extracted tree is kept for the next run against
the same commit; building one for another commit removes it.

Every named workload runs ``--rounds`` times for both trees, alternating (the working tree first in odd
rounds, the compared commit first in even ones, so that neither always runs on a warmer machine); W1
also runs the bare echo baseline (``bench/baseline.py``) in every round. Printed per round and overall:
each tree's figures, their ratio (working tree / compared commit) and, for W1, each against the echo.
Figures in ``bench/results/compare.json``.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from bench.harness import Target
from bench.runner import Runner
from bench.workloads import (
    Env,
    Figures,
    Sizes,
    w1_throughput,
    w3_join_storm,
    w4_fanout_service,
    w5_force_mute_service,
    w6_memory,
    w7_one_room_against_many,
    w8_restrictions_by_size,
)

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build"
WORKING, COMPARED = "working", "compared"

Workload = Callable[[Target, Env, Sizes], Coroutine[Any, Any, Figures]]


@dataclass(frozen=True)
class Comparable:
    """A workload the comparison can run: the service's function and its figures compared (a time or a
    CPU figure: lower is better, except throughput)."""

    run: Workload
    figures: tuple[str, ...]


COMPARABLE: dict[str, Comparable] = {
    "w1": Comparable(w1_throughput, ("commands_per_second", "cpu_seconds_per_1000")),
    "w3": Comparable(w3_join_storm, ("seconds",)),
    "w4": Comparable(w4_fanout_service, ("seconds",)),
    "w5": Comparable(w5_force_mute_service, ("seconds",)),
    "w6": Comparable(w6_memory, ("bytes_per_participant",)),
    "w7": Comparable(w7_one_room_against_many, ("spread_seconds", "one_room_seconds")),
    # The two trees against each other; W8's bare loop is for `--only w8` without --compare.
    "w8": Comparable(partial(w8_restrictions_by_size, bare_loop=False), ("small_seconds", "large_seconds")),
}


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()  # noqa: S607


def build_tree(commit: str) -> tuple[str, Path]:
    """The commit's full id and its ``service/`` tree under ``build/`` (extracted unless already there)."""
    sha = _git("rev-parse", "--verify", f"{commit}^{{commit}}")
    tree = BUILD / f"compare-{sha[:12]}"
    marker = tree / ".extracted"
    if marker.exists() and marker.read_text() == sha:
        print(f"compare: reusing {tree.relative_to(ROOT)} ({sha[:12]})")
        return sha, tree
    for old in BUILD.glob("compare-*"):
        shutil.rmtree(old)
    tree.mkdir(parents=True)
    archive = subprocess.Popen(["git", "archive", sha, "service"], cwd=ROOT, stdout=subprocess.PIPE)  # noqa: S607
    subprocess.run(["tar", "-x", "-C", str(tree)], stdin=archive.stdout, check=True)  # noqa: S607
    if archive.wait() != 0:
        raise RuntimeError(f"git archive {sha} failed")
    marker.write_text(sha)
    print(f"compare: extracted {sha[:12]}'s service/ into {tree.relative_to(ROOT)}")
    return sha, tree


def pythonpath(service_dir: Path) -> str:
    """``PYTHONPATH`` importing the package from ``service_dir`` (before the editable install), keeping
    what the environment already has (``--trace`` puts ``bench/trace`` there)."""
    return os.pathsep.join(p for p in (str(service_dir), os.environ.get("PYTHONPATH", "")) if p)


def imported_from(path: str) -> str:
    """Where a process with this ``PYTHONPATH`` imports ``livekit_signaling`` from."""
    return subprocess.run(
        [sys.executable, "-c", "import livekit_signaling; print(livekit_signaling.__file__)"],
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def _fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}x"


def _w1_line(figures: dict[str, Figures]) -> str:
    """One W1 round (or the overall medians): each tree, their ratio, and each against the echo."""
    rate, cpu = "commands_per_second", "cpu_seconds_per_1000"

    def against(a: Figures, b: Figures) -> str:
        return f"throughput {_fmt_ratio(_ratio(a[rate], b[rate]))}, CPU {_fmt_ratio(_ratio(a[cpu], b[cpu]))}"

    echo, w, c = figures["echo"], figures[WORKING], figures[COMPARED]
    parts = [
        f"{side} {f[rate]:,.0f} cmd/s, {f[cpu]:.3f} CPU s/1000 (vs echo: {against(f, echo)})"
        for side, f in ((WORKING, w), (COMPARED, c))
    ]
    parts.append(f"echo {echo[rate]:,.0f} cmd/s, {echo[cpu]:.3f} CPU s/1000")
    return "; ".join(parts) + f"; working/compared: {against(w, c)}"


def _line(figures: dict[str, Figures], keys: tuple[str, ...]) -> str:
    w, c = figures[WORKING], figures[COMPARED]
    return "; ".join(
        f"{key}: working {float(w[key]):.3f}, compared {float(c[key]):.3f}, "
        f"ratio {_fmt_ratio(_ratio(float(w[key]), float(c[key])))}"
        for key in keys
    )


def _summary(rounds: list[dict[str, Figures]], keys: tuple[str, ...]) -> dict[str, Any]:
    """Per side the median of each figure over the rounds; the ratios of the medians; every round's."""
    sides = list(rounds[0])
    per_round = {k: [_ratio(float(r[WORKING][k]), float(r[COMPARED][k])) for r in rounds] for k in keys}
    medians = {
        side: {k: statistics.median(float(r[side][k]) for r in rounds) for k in keys} for side in sides
    }
    return {
        "medians": medians,
        "ratio_of_medians": {k: _ratio(medians[WORKING][k], medians[COMPARED][k]) for k in keys},
        "rounds_ratio": per_round,
        # Paired: each round's two trees ran side by side, so the median of the rounds' ratios is the
        # figure least moved by a disturbance that hit one round.
        "median_round_ratio": {
            k: round(statistics.median(v for v in per_round[k] if v is not None), 3) for k in keys
        },
        **(
            {
                "against_echo": {
                    side: {k: _ratio(medians[side][k], medians["echo"][k]) for k in keys}
                    for side in (WORKING, COMPARED)
                }
            }
            if "echo" in medians
            else {}
        ),
    }


def _kept(figures: Figures) -> Figures:
    """A round's figures without raw samples (W7's runs, W8's per-size detail stay; they are small)."""
    return {k: v for k, v in figures.items() if k not in {"samples_s", "timeline_s"}}


def run_compare(runner: Runner, commit: str) -> dict[str, Any]:
    args, env, sizes = runner.args, runner.env, runner.sizes
    unknown = [w for w in args.only if w not in COMPARABLE]
    if unknown:
        raise SystemExit(f"--compare runs {', '.join(COMPARABLE)}; not {', '.join(unknown)}")
    sha, tree = build_tree(commit)
    paths = {WORKING: pythonpath(ROOT / "service"), COMPARED: pythonpath(tree / "service")}
    imports = {side: imported_from(path) for side, path in paths.items()}
    for side, where in imports.items():
        print(f"compare: {side} imports livekit_signaling from {where}")
    if not imports[COMPARED].startswith(str(tree)) or not imports[WORKING].startswith(str(ROOT / "service")):
        raise SystemExit("compare: a tree's package is not imported from that tree")
    changed = _git("diff", "--name-only", sha, "--", "requirements", "pyproject.toml")
    if changed:
        print(f"compare: WARNING the dependencies differ from {sha[:12]} ({changed.replace(chr(10), ', ')}); "
              "both trees run on this tree's .venv")  # fmt: skip
    results: dict[str, Any] = {
        "commit": sha,
        "trees": {WORKING: str(ROOT), COMPARED: str(tree)},
        "imports": imports,
    }
    for name in args.only:
        comparable = COMPARABLE[name]
        print(f"{name.upper()} compare: working tree against {sha[:12]}, {args.rounds} round(s) alternating")
        rounds: list[dict[str, Figures]] = []
        for number in range(args.rounds):
            figures: dict[str, Figures] = {}
            if name == "w1":
                figures["echo"] = runner.on(runner.baseline, lambda t: w1_throughput(t, env, sizes))
            order = (WORKING, COMPARED) if number % 2 == 0 else (COMPARED, WORKING)
            for side in order:
                make = partial(runner.service, settings={"PYTHONPATH": paths[side]}, label=side)
                figures[side] = runner.on(make, lambda t, run=comparable.run: run(t, env, sizes))
            rounds.append({side: _kept(f) for side, f in figures.items()})
            line = _w1_line(figures) if name == "w1" else _line(figures, comparable.figures)
            others = max(float(f.get("other_processes_cores", 0)) for f in figures.values())
            print(
                f"  {name.upper()} round {number + 1}: {line} [other processes: up to {others:.2f} cores]",
                flush=True,
            )
        summary = _summary(rounds, comparable.figures)
        medians = summary["medians"]
        overall = _w1_line(medians) if name == "w1" else _line(medians, comparable.figures)
        print(f"{name.upper()} overall (medians of {args.rounds} round(s)): {overall}")
        paired = ", ".join(f"{k} {v:.3f}x" for k, v in summary["median_round_ratio"].items())
        print(f"{name.upper()} working/compared, median of the rounds' ratios: {paired}")
        results[name] = {"rounds": rounds, **summary}
    return results
