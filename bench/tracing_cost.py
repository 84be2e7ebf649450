"""W10's measures inside the bench process: the command pipeline without a broker, under each tracing
mode, and the tracing seams alone with tracing off. They complement W10's runs of the service as a
process, whose figures move with the load of the shared machine: here the modes alternate in batches in
one process, on the same objects, so that the difference between them is the tracing's own."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import random
import statistics
import time
import timeit
import uuid
from dataclasses import dataclass

from livekit_signaling.emulator import LiveKitEmulator
from livekit_signaling.pipeline.ports import Delivery, OutgoingEvent
from livekit_signaling.schemas.routing import command_routing_key
from livekit_signaling.store.memory import MemoryStateStore
from livekit_signaling.telemetry.tracing import NO_TRACING
from livekit_signaling.telemetry.tracing.setup import TracingConfig, TracingSetup, start_tracing
from testkit.pipeline import Pipeline, start_pipeline
from testkit.processes import API_KEY, API_SECRET

ROOMS = 500
BATCH = 1000


@dataclass
class _Rig:
    pipeline: Pipeline
    setup: TracingSetup
    #: The fraction of the controller's traces that are sampled.
    sampled: float = 1.0


async def _rig(emulator_url: str, config: TracingConfig, *, sampled: float = 1.0) -> _Rig:
    setup = start_tracing(config, command_exchange="c", event_exchange="e", instance="bench", version="0")
    pipeline = await start_pipeline(
        emulator_url,
        MemoryStateStore(dedup_window_seconds=600, room_idle_seconds=86400),
        api_key=API_KEY,
        api_secret=API_SECRET,
        tracing=setup.tracing,
        trace_configs=setup.http_trace_configs,
        room_cache_seconds=3600,
    )
    return _Rig(pipeline, setup, sampled)


def _traceparent(sampled: float) -> str:
    flags = "01" if random.random() < sampled else "00"
    return f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-{flags}"


async def _batch(rig: _Rig, bodies: list[bytes]) -> float:
    """CPU seconds of this process (every thread: the exporter's too) for one batch of W1's commands
    from a traced controller, until they are acknowledged and their spans exported."""
    transport = rig.pipeline.transport
    start = len(transport.acked)
    # Each batch starts from the same collector state: one mode's garbage is not collected on
    # another's time.
    gc.collect()
    cpu = time.process_time()
    for index, body in enumerate(bodies):
        rig.pipeline.processor.on_delivery(
            Delivery(
                body=body,
                routing_key=command_routing_key(f"w10-{index % ROOMS}"),
                message_id=uuid.uuid4().hex,
                partition=0,
                delivery_count=0,
                headers={"traceparent": _traceparent(rig.sampled)},
            )
        )
        if index % 100 == 99:  # as a prefetch would: the broker hands out a bounded number
            await transport.until(lambda done=start + index + 1: len(transport.acked) >= done)
    await transport.until(lambda: len(transport.acked) >= start + len(bodies))
    if rig.setup.provider is not None:
        rig.setup.provider.force_flush()
    seconds = time.process_time() - cpu
    transport.published.clear()
    return seconds


async def pipeline_cost(receiver_endpoint: str, *, rounds: int) -> dict[str, float]:
    """Median CPU microseconds per command of the pipeline (processor, handler, tokens, the in-memory
    store, the real LiveKit adapter against an emulator in this process, a transport that confirms at
    once) with tracing off, propagation only, every span exported to the receiver, and exported with
    the controller sampling one trace in ten."""
    emulator = LiveKitEmulator(API_KEY, API_SECRET)
    url = await emulator.start()
    export = TracingConfig(exporter="otlp", otlp_endpoint=f"{receiver_endpoint}/v1/traces")
    rigs = {
        "off": await _rig(url, TracingConfig(disabled=True)),
        "propagation": await _rig(url, TracingConfig(exporter="none")),
        "export": await _rig(url, export),
        "export_sampled_10": await _rig(url, export, sampled=0.1),
    }
    bodies = [
        json.dumps(
            {"room": f"w10-{i % ROOMS}", "participant": f"p{i % 10}", "role": "user",
             "payload": {"action": "create_new_access_token"}}
        ).encode()
        for i in range(BATCH)
    ]  # fmt: skip
    try:
        for rig in rigs.values():  # warm up: every room created, every code path run once
            await _batch(rig, bodies)
        gc.freeze()  # as the service does after start-up
        samples: dict[str, list[float]] = {mode: [] for mode in rigs}
        for _ in range(rounds):
            for mode, rig in rigs.items():
                samples[mode].append(await _batch(rig, bodies))
    finally:
        for rig in rigs.values():
            await rig.pipeline.close()
            await asyncio.to_thread(rig.setup.shutdown)
        await emulator.stop()
    return {mode: round(statistics.median(values) / BATCH * 1e6, 1) for mode, values in samples.items()}


def noop_seams_ns_per_command(rounds: int = 200_000) -> float:
    """What the tracing seams cost a command when tracing is off (``NO_TRACING``): the calls the
    processor and the publisher make for one command with one event, timed in this process. Shows that
    "off" costs nothing measurable without a second build of the service to compare with."""
    delivery = Delivery(
        body=b"{}",
        routing_key="room.r",
        message_id="m",
        partition=0,
        delivery_count=0,
        headers={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
    )
    events = [OutgoingEvent(b"{}", "room.r.participant.p", "credentials", "m", "m:0")]

    def one_command() -> None:
        trace = NO_TRACING.command(delivery)
        with trace.activate("r"):
            _ = trace.event_headers
            with trace.publication(events):
                pass
            trace.settled("create_new_access_token", "ok")
            trace.exemplar()
        trace.end()

    seconds = min(timeit.repeat(one_command, number=rounds, repeat=3))
    return round(seconds / rounds * 1e9, 1)
