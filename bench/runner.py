"""The bench's runner: a fresh target per workload (service or baseline, started, measured and
stopped, its topology deleted), and how busy other processes kept the machine meanwhile. Shared by the
ordinary run (``bench.run``) and the paired comparison (``bench.compare``)."""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Callable, Coroutine
from typing import Any

import aiormq
import psutil  # type: ignore[import-untyped]

from bench.harness import BaselineTarget, ServiceTarget, Target, cpu_seconds, rabbitmq_pid, wait_for_broker
from bench.report import DISTURBED
from bench.workloads import Env, Figures, Sizes


def machine_busy() -> float:
    """CPU seconds all processes spent so far (everything but idle and iowait)."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def own_cpu() -> float:
    """CPU seconds of this process and of its children that were waited for (service, baseline, ...)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


class Disturbance:
    """How busy processes outside this run (other people's tests) kept the machine during a workload: all
    CPU time minus this process's, its children's (target, emulator, py-spy) and the broker's, per wall
    second."""

    def __init__(self) -> None:
        self._broker = rabbitmq_pid()
        self._start = time.perf_counter()
        self._before = self._sample()

    def _sample(self) -> float:
        me = os.times()  # children_* holds the children already waited for
        ours = me.user + me.system + me.children_user + me.children_system + cpu_seconds(self._broker)
        for child in psutil.Process().children(recursive=True):
            ours += cpu_seconds(child.pid)
        return machine_busy() - ours

    def others_cores(self) -> float:
        return round((self._sample() - self._before) / (time.perf_counter() - self._start), 2)


class Runner:
    def __init__(self, args: argparse.Namespace, env: Env) -> None:
        self.args = args
        self.env = env
        self.sizes = Sizes.quick() if args.quick else Sizes.full()

    def service(
        self,
        *,
        redis_store: bool | None = None,
        settings: dict[str, str] | None = None,
        label: str = "service",
    ) -> Target:
        """The service, with the store ``--redis`` chose unless ``redis_store`` says otherwise, and
        ``settings`` beside the production defaults (W10: the tracing mode)."""
        return ServiceTarget(
            self.env.emulator_url,
            self.args.partitions,
            self.args.prefetch,
            use_redis=self.args.redis if redis_store is None else redis_store,
            label=label,
            settings=settings or {},
        )

    def baseline(self) -> Target:
        return BaselineTarget(self.args.partitions, self.args.prefetch)

    def on(
        self, make: Callable[[], Target], workload: Callable[[Target], Coroutine[Any, Any, Figures]]
    ) -> Figures:
        """Start a fresh target, run one workload against it, stop it and delete its topology. Other
        people's tests may restart the shared broker: a workload that failed on a connection error or did
        not get all its events is run once more, on new processes and a new topology."""
        for attempt in (1, 2):
            target = make()
            started = time.perf_counter()
            try:
                try:
                    target.start()
                    probe = Disturbance()
                    figures: Figures = asyncio.run(workload(target))
                    figures["other_processes_cores"] = probe.others_cores()
                finally:
                    target.stop()
            except (ConnectionError, aiormq.exceptions.AMQPError, RuntimeError, TimeoutError) as error:
                if attempt == 2:
                    raise
                print(f"  {target.label}: {type(error).__name__} ({error}); broker restarted? once more")
                wait_for_broker()
                continue
            if figures.get("complete", True) or attempt == 2:
                break
            print(f"  {target.label}: not all events arrived; once more")
            wait_for_broker()
        figures["attempts"] = attempt
        figures["wall_seconds_incl_start_stop"] = round(time.perf_counter() - started, 1)
        state = "" if figures.get("complete", True) else "  INCOMPLETE"
        others = figures["other_processes_cores"]
        if others > DISTURBED:
            state += f"  DISTURBED: other processes used {others:.2f} cores meanwhile"
        print(
            f"  {target.label:<8} done in {figures['wall_seconds_incl_start_stop']:.1f}s{state}", flush=True
        )
        return figures
