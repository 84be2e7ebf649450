"""Tracing for ``bench/run.sh --trace``: imported by every Python process of the run through PYTHONPATH
(``sitecustomize`` is imported at interpreter start), active only when BENCH_TRACE_DIR is set.

It patches nothing in the service's behaviour; it wraps functions to take timestamps and writes them at
exit. All timestamps are ``time.perf_counter()``, which is CLOCK_MONOTONIC on Linux and therefore
comparable across the processes of one machine.

- the service (``livekit-signaling run``): per command, when the delivery reached the processor, when
  its execution started, when its events were handed to the transport and when their confirms came
  back, and when it was acknowledged; the event loop's lag (a 2 ms sleep's overshoot); every callback
  that ran longer than 5 ms; every garbage collection of generation 1-2 (or longer than 3 ms).
- the bench (``python -m bench.run``): per command of each load generator, when it was published and
  when its first event arrived.
- the baseline (``python -m bench.baseline``): per event publish, when it started and when it was
  confirmed, by the command's id.

``python -m bench.trace.report`` joins the files by command id and splits each command's latency into
broker-in (publish to the service's processor), service, and broker-out (event publish to the load
generator). It is how the W2 tail was traced to a full garbage collection and to aiormq's publish
lock.
"""

from __future__ import annotations

import atexit
import gc
import importlib.abc
import os
import sys
import time
from typing import Any

_DIR = os.environ.get("BENCH_TRACE_DIR")
_ARGV = getattr(sys, "orig_argv", [])


def _path(kind: str) -> str:
    assert _DIR is not None
    name = os.environ.get("SIGNALING_QUEUE", "bench")
    return os.path.join(_DIR, f"{kind}.{name}.{os.getpid()}.txt")


def _after_import(module: str, patch: Any) -> None:
    """Run ``patch`` once ``module`` is about to be imported (the patch imports it itself)."""

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, path: Any, target: Any = None) -> None:
            if name == module:
                sys.meta_path.remove(self)
                patch()

    sys.meta_path.insert(0, Finder())


def _trace_service() -> None:
    import asyncio.events

    commands: list[tuple[Any, ...]] = []
    slow: list[tuple[float, float, str]] = []
    collections: list[tuple[float, int, float, int]] = []
    lags: list[tuple[float, float]] = []
    clock = time.perf_counter

    original_run = asyncio.events.Handle._run

    def run_handle(self: Any) -> None:
        started = clock()
        original_run(self)
        took = clock() - started
        if took > 0.005:
            slow.append((started, took, repr(self)[:200]))

    asyncio.events.Handle._run = run_handle  # type: ignore[method-assign]

    gc_started = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_started[0] = clock()
            return
        took = clock() - gc_started[0]
        if info["generation"] >= 1 or took > 0.003:
            collections.append((gc_started[0], info["generation"], took, info["collected"]))

    gc.callbacks.append(on_gc)

    def patch_processor() -> None:
        from livekit_signaling.app import processor

        cls = processor.CommandProcessor
        on_delivery, process, publish = cls.on_delivery, cls._process, cls._publish
        monitor: list[Any] = []

        async def watch_lag() -> None:
            import asyncio

            while True:
                before = clock()
                await asyncio.sleep(0.002)
                lags.append((before, clock() - before - 0.002))

        def traced_on_delivery(self: Any, delivery: Any) -> None:
            if not monitor:
                import asyncio

                monitor.append(asyncio.get_running_loop().create_task(watch_lag()))
            delivery.headers["_trace"] = [clock(), 0.0, 0.0, 0.0]
            on_delivery(self, delivery)

        async def traced_process(self: Any, delivery: Any, envelope: Any) -> Any:
            marks = delivery.headers.get("_trace") or [0.0, 0.0, 0.0, 0.0]
            marks[1] = clock()
            result = await process(self, delivery, envelope)
            commands.append((delivery.message_id, *marks, clock()))
            return result

        async def traced_publish(self: Any, delivery: Any, events: Any) -> None:
            marks = delivery.headers.get("_trace") or [0.0, 0.0, 0.0, 0.0]
            marks[2] = clock()
            await publish(self, delivery, events)
            marks[3] = clock()

        cls.on_delivery = traced_on_delivery  # type: ignore[method-assign]
        cls._process = traced_process  # type: ignore[method-assign]
        cls._publish = traced_publish  # type: ignore[method-assign]

    _after_import("livekit_signaling.app.service", patch_processor)

    def dump() -> None:
        with open(_path("service"), "w") as out:
            for row in commands:
                out.write("C " + " ".join([str(row[0])] + [f"{v:.6f}" for v in row[1:]]) + "\n")
            for at, took in lags:
                out.write(f"L {at:.6f} {took:.6f}\n")
            for at, took, what in slow:
                out.write(f"S {at:.6f} {took:.6f} {what}\n")
            for at, generation, took, collected in collections:
                out.write(f"G {at:.6f} {generation} {took:.6f} {collected}\n")

    atexit.register(dump)


def _trace_bench() -> None:
    def patch_loadgen() -> None:
        from bench import loadgen

        original_exit = loadgen.LoadGenerator.__aexit__

        def write(generator: Any) -> None:
            assert _DIR is not None
            name = f"generator.{generator.names.queue}.{os.getpid()}.txt"
            with open(os.path.join(_DIR, name), "w") as out:
                out.write(f"measured_from {generator.measured_from:.6f} 0\n")
                for message_id, track in generator.collector.tracks.items():
                    out.write(f"{message_id} {track.sent:.6f} {track.first:.6f}\n")

        async def traced_exit(self: Any, *args: Any) -> None:
            write(self)
            await original_exit(self, *args)

        loadgen.LoadGenerator.__aexit__ = traced_exit  # type: ignore[method-assign]

    _after_import("bench.workloads", patch_loadgen)


def _trace_baseline() -> None:
    publishes: list[tuple[float, float, str]] = []

    def patch_exchange() -> None:
        import aio_pika.exchange

        original = aio_pika.exchange.Exchange.publish

        async def traced_publish(self: Any, message: Any, routing_key: str, **kwargs: Any) -> Any:
            started = time.perf_counter()
            result = await original(self, message, routing_key, **kwargs)
            publishes.append((started, time.perf_counter(), str(message.correlation_id)))
            return result

        aio_pika.exchange.Exchange.publish = traced_publish  # type: ignore[method-assign]

    _after_import("aio_pika", patch_exchange)

    def dump() -> None:
        with open(_path("baseline"), "w") as out:
            for started, confirmed, command_id in publishes:
                out.write(f"P {command_id} {started:.6f} {confirmed:.6f}\n")

    atexit.register(dump)


if _DIR:
    if _ARGV[-2:] == ["service", "run"]:
        _trace_service()
    elif "bench.run" in _ARGV:
        _trace_bench()
    elif "bench.baseline" in _ARGV:
        _trace_baseline()
