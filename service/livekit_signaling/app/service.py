"""Wiring and lifecycle: start everything, take commands until asked to stop, then drain and stop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
import uuid

from livekit.api import TokenVerifier, WebhookReceiver
from livekit.protocol.webhook import WebhookEvent
from prometheus_client import CollectorRegistry
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential_jitter

from livekit_signaling import __version__
from livekit_signaling.app.http import HttpServer
from livekit_signaling.app.settings import Settings
from livekit_signaling.domain.deadline import command_deadline
from livekit_signaling.domain.errors import LiveKitRejected, LiveKitUnavailable, StoreUnavailable
from livekit_signaling.domain.handler import CommandHandler, ConnectionUrls
from livekit_signaling.domain.permissions import PublishPolicy
from livekit_signaling.domain.ports import StateStore
from livekit_signaling.domain.publishers import TrustedPublishers
from livekit_signaling.livekit.adapter import LiveKitAdapter
from livekit_signaling.livekit.tokens import TokenMinter
from livekit_signaling.pipeline.balancer import REGISTRATION_INTERVALS, PartitionBalancer
from livekit_signaling.pipeline.processor import CommandProcessor
from livekit_signaling.reconcile.recent import RecentRepairs
from livekit_signaling.reconcile.reconciler import Reconciler
from livekit_signaling.reconcile.room_check import RoomChecker
from livekit_signaling.store.memory import MemoryStateStore
from livekit_signaling.store.redis import RedisReplicaRegistry, RedisStateStore
from livekit_signaling.telemetry.metrics import Metrics
from livekit_signaling.telemetry.tracing import NO_TRACING, Tracing
from livekit_signaling.telemetry.tracing.setup import start_tracing
from livekit_signaling.transport.amqp import AmqpTransport, Topology
from livekit_signaling.transport.refusals import BrokerRefusal

log = logging.getLogger(__name__)

#: Webhooks that may reveal a participant whose permission lags behind the room's state.
RECHECK_WEBHOOKS = frozenset({"participant_joined", "track_published"})
#: LiveKit accepts a token up to a minute past its expiry (its verifier's leeway).
LIVEKIT_TOKEN_LEEWAY_SECONDS = 60
#: The share of ``LIVEKIT_MAX_CONCURRENT_REQUESTS`` reconciliation may use for rooms checked at once;
#: the rest stays free for commands.
RECONCILE_SHARE_OF_LIVEKIT_CALLS = 4


def build_store(settings: Settings, tracing: Tracing = NO_TRACING) -> StateStore:
    # A room stays on its reconcile list this long after its last decision was lifted: a token minted
    # before the lift (without the microphone) can connect until it expires.
    lift_grace_seconds = settings.token_ttl_seconds + LIVEKIT_TOKEN_LEEWAY_SECONDS
    target = settings.redis
    if target is not None:
        log.info("state in %s; writes wait for %d replica(s)", target.describe(), target.required_replicas)
        return RedisStateStore(
            target,
            prefix=settings.redis_key_prefix,
            dedup_window_seconds=settings.dedup_window_seconds,
            room_idle_seconds=settings.room_idle_seconds,
            min_replicas=target.required_replicas,
            wait_timeout_seconds=settings.redis_wait_timeout_seconds,
            partitions=settings.partitions,
            lift_grace_seconds=lift_grace_seconds,
            tracing=tracing,
        )
    return MemoryStateStore(
        dedup_window_seconds=settings.dedup_window_seconds,
        room_idle_seconds=settings.room_idle_seconds,
        lift_grace_seconds=lift_grace_seconds,
    )


class SignalingService:
    def __init__(
        self, settings: Settings, *, registry: CollectorRegistry | None = None, keep_traces: bool = False
    ) -> None:
        """``keep_traces`` (``dev``): record spans even without an exporter and keep the latest traces
        for the console."""
        self.settings = settings
        self.metrics = Metrics(registry)
        self.metrics.partitions_total.set(settings.partitions)
        self.replica = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.tracer = start_tracing(
            settings.tracing,
            command_exchange=settings.command_exchange,
            event_exchange=settings.event_exchange,
            instance=self.replica,
            version=__version__,
            keep_for_console=keep_traces,
        )
        self.store = build_store(settings, self.tracer.tracing)
        self._ready = False
        self._stopping = False
        #: What RabbitMQ refused at start-up and how to fix it, while it does (``/readyz`` shows it).
        self.broker_refusal: BrokerRefusal | None = None
        self.transport = AmqpTransport(
            urls=settings.amqp_urls,
            topology=Topology(
                command_exchange=settings.command_exchange,
                event_exchange=settings.event_exchange,
                queue=settings.queue,
                partitions=settings.partitions,
                dead_letter_exchange=settings.dead_letter_exchange,
                delivery_limit=settings.delivery_limit,
            ),
            prefetch=settings.amqp_prefetch,
            heartbeat_seconds=settings.amqp_heartbeat_seconds,
            reconnect_interval_seconds=settings.amqp_reconnect_seconds,
            connect_timeout_seconds=settings.amqp_connect_timeout_seconds,
            connection_name=f"livekit-signaling@{self.replica}",
        )
        self.transport.on_connection_change = self._on_connection_change
        self.http = HttpServer(
            host=settings.http_host,
            port=settings.http_port,
            metrics=self.metrics,
            is_ready=self.is_ready,
            describe=self.describe,
            webhook_receiver=WebhookReceiver(
                TokenVerifier(settings.livekit_api_key, settings.livekit_api_secret)
            ),
            on_webhook=self._on_webhook,
            before_scrape=self._refresh_gauges,
        )
        self.livekit: LiveKitAdapter | None = None
        self.processor: CommandProcessor | None = None
        self._balancing: asyncio.Task[None] | None = None
        self._reconciling: asyncio.Task[None] | None = None
        #: The latest repairs of each room (the dev console shows them).
        self.recent_repairs = RecentRepairs()
        self.policy = PublishPolicy(
            screen_share_requires_permission=settings.screen_share_requires_permission
        )

    def is_ready(self) -> bool:
        return self._ready and not self._stopping and self.transport.is_connected

    def describe(self) -> str:
        """What ``/readyz`` shows: the connection and the partitions this replica holds."""
        active = ",".join(str(p) for p in sorted(self.transport.active_partitions)) or "-"
        refused = (
            f"amqp_refused: {self.broker_refusal.cause}\nfix: {self.broker_refusal.fix}\n"
            if self.broker_refusal is not None
            else ""
        )
        return (
            f"replica: {self.replica}\n"
            f"amqp_connected: {str(self.transport.is_connected).lower()}\n"
            f"amqp_node: {self.transport.node or '-'}\n"
            f"{refused}"
            f"partitions: {self.settings.partitions}\n"
            f"active_partitions: {active}\n"
        )

    async def _refresh_gauges(self) -> None:
        """Gauges read from the shared state at scrape time (the store is the truth, not this replica)."""
        try:
            self.metrics.restricted_rooms.set(await self.store.count_restricted_rooms())
        except StoreUnavailable:
            log.warning("state store unavailable; rooms_with_microphone_restrictions not refreshed")

    def _on_connection_change(self, connected: bool) -> None:
        self.metrics.amqp_connected.set(1 if connected else 0)
        for node in self.transport.nodes:
            self.metrics.amqp_node.labels(node).set(1 if connected and node == self.transport.node else 0)
        if connected and self._ready:
            self.metrics.amqp_reconnects.inc()
        self.metrics.ready.set(1 if self.is_ready() else 0)

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then shut down gracefully."""
        settings = self.settings
        await self.http.start()
        log.info("HTTP endpoints on port %s", self.http.port)
        log.info("tracing: %s", settings.tracing.describe())
        self.livekit = LiveKitAdapter(
            url=settings.livekit_url,
            api_key=settings.livekit_api_key,
            api_secret=settings.livekit_api_secret,
            request_timeout_seconds=settings.livekit_request_timeout_seconds,
            attempts=settings.livekit_retry_attempts,
            max_concurrent_requests=settings.livekit_max_concurrent_requests,
            metrics=self.metrics,
            room_cache_seconds=settings.livekit_room_cache_seconds,
            tracing=self.tracer.tracing,
            trace_configs=self.tracer.http_trace_configs,
        )
        await self.livekit.start()
        handler = CommandHandler(
            livekit=self.livekit,
            tokens=TokenMinter(
                settings.livekit_api_key, settings.livekit_api_secret, ttl_seconds=settings.token_ttl_seconds
            ),
            store=self.store,
            policy=self.policy,
            urls=ConnectionUrls(public_url=settings.public_url, service_url=settings.livekit_service_url),
        )
        self.handler = handler
        self.processor = CommandProcessor(
            handler=handler,
            store=self.store,
            transport=self.transport,
            metrics=self.metrics,
            command_deadline_seconds=settings.command_deadline_seconds,
            max_body_bytes=settings.max_body_bytes,
            delivery_limit=settings.delivery_limit,
            transient_retry_seconds=settings.transient_retry_seconds,
            trusted_publishers=TrustedPublishers(settings.trusted_publishers),
            tracing=self.tracer.tracing,
        )
        try:
            if not await self._connect(stop):
                return
            await self.transport.start_consuming(self.processor.on_delivery)
            self._ready = True
            self.metrics.ready.set(1)
            self.balancer = PartitionBalancer(
                transport=self.transport,
                hand_over=self.processor.hand_over,
                registry=(
                    RedisReplicaRegistry(
                        self.store, ttl_seconds=REGISTRATION_INTERVALS * settings.rebalance_interval_seconds
                    )
                    if isinstance(self.store, RedisStateStore)
                    else None
                ),
                replica=self.replica,
                partitions=settings.partitions,
                interval_seconds=settings.rebalance_interval_seconds,
                metrics=self.metrics,
            )
            self._balancing = asyncio.create_task(self.balancer.run(), name="partition-balancer")
            if settings.reconcile_interval_seconds > 0:
                self._reconciling = asyncio.create_task(
                    self._reconciler(self.livekit, self.processor, self.balancer).run(), name="reconciler"
                )
            log.info("start-up objects frozen out of the garbage collector: %d", _freeze_start_up_objects())
            log.info("consuming %d partition(s) of %s", settings.partitions, settings.command_exchange)
            if settings.trusted_publishers is not None:
                log.info("acting only on commands of %s", ", ".join(sorted(settings.trusted_publishers)))
            await stop.wait()
        finally:
            await self._shutdown()

    def _reconciler(
        self, livekit: LiveKitAdapter, processor: CommandProcessor, balancer: PartitionBalancer
    ) -> Reconciler:
        settings = self.settings
        return Reconciler(
            checker=RoomChecker(
                livekit=livekit,
                store=self.store,
                policy=self.policy,
                disconnect_unknown=settings.reconcile_disconnect_unknown,
            ),
            rooms=self.store,
            held_partitions=balancer.held_partitions,
            in_room_order=processor.submit_in_room_order,
            interval_seconds=settings.reconcile_interval_seconds,
            rooms_in_flight=max(
                1, settings.livekit_max_concurrent_requests // RECONCILE_SHARE_OF_LIVEKIT_CALLS
            ),
            deadline_seconds=settings.command_deadline_seconds,
            metrics=self.metrics,
            recent=self.recent_repairs,
        )

    async def _connect(self, stop: asyncio.Event) -> bool:
        """Connect to RabbitMQ, retrying with backoff until it answers and accepts the topology, or we
        are told to stop. A refusal (a configuration error) is logged once as an error naming the fix,
        shown on ``/readyz`` and retried like an outage: a fix on the broker (the plugin, a permission, a
        drained queue deleted) then takes effect without restarting the replica
        (docs/operations/first-run.md)."""
        retrying = AsyncRetrying(
            wait=wait_exponential_jitter(multiplier=0.5, max=10.0),
            retry=retry_if_exception_type((OSError, ConnectionError, asyncio.TimeoutError, BrokerRefusal)),
            reraise=True,
        )
        async for attempt in retrying:
            if stop.is_set():
                return False
            with attempt:
                try:
                    await self.transport.connect()
                except BrokerRefusal as refusal:
                    if self.broker_refusal is None or str(self.broker_refusal) != str(refusal):
                        log.error("RabbitMQ refused the service: %s", refusal)
                    self.broker_refusal = refusal
                    self.metrics.amqp_refused.set(1)
                    await self.transport.close()
                    raise
                except Exception as error:
                    log.warning("RabbitMQ not reachable (%s); retrying", type(error).__name__)
                    await self.transport.close()
                    raise
        if self.broker_refusal is not None:
            log.info("RabbitMQ accepts the service now")
        self.broker_refusal = None
        self.metrics.amqp_refused.set(0)
        return True

    async def _shutdown(self) -> None:
        self._stopping = True
        self.metrics.ready.set(0)
        await _cancel(self._reconciling)
        if self._balancing is not None:
            await _cancel(self._balancing)
            await self.balancer.leave()
        log.info("shutting down: releasing partitions, finishing commands in flight")
        if self.processor is not None:
            await self.processor.drain(self.settings.shutdown_grace_seconds)
        await self.transport.close()
        if self.livekit is not None:
            await self.livekit.close()
        await self.store.close()
        await self.http.stop()
        await self._flush_traces()
        log.info("stopped")

    async def _flush_traces(self, timeout_seconds: float = 5.0) -> None:
        """Export the spans still queued; bounded, since the Collector may be gone."""
        try:
            async with asyncio.timeout(timeout_seconds):
                await asyncio.to_thread(self.tracer.shutdown)
        except TimeoutError:
            log.warning("spans not all exported within %.0f s of shutdown", timeout_seconds)

    async def _on_webhook(self, event: WebhookEvent) -> None:
        """Re-apply the room's permissions to a participant who joined or published, in the room's
        command order (a token minted before a restriction still carries the old sources)."""
        if event.event not in RECHECK_WEBHOOKS or self.processor is None:
            self.metrics.webhooks.labels(event.event or "unknown", "ignored").inc()
            return
        room, identity = event.room.name, event.participant.identity
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def recheck() -> None:
            try:
                with command_deadline(self.settings.command_deadline_seconds):
                    await self.handler.reapply_permissions(room, identity)
                self.metrics.webhooks.labels(event.event, "ok").inc()
            except (LiveKitUnavailable, LiveKitRejected) as error:
                log.warning("webhook re-check failed: %s", type(error).__name__, extra={"room": room})
                self.metrics.webhooks.labels(event.event, "failed").inc()
            finally:
                done.set_result(None)

        self.processor.serializer.submit(room, recheck)
        await done


async def _cancel(task: asyncio.Task[None] | None) -> None:
    """Stop a background task and wait until it has."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _freeze_start_up_objects() -> int:
    """Move everything allocated so far (modules, classes, the connection: ~70,000 objects) out of the
    garbage collector's reach: a full collection would otherwise walk them all and stall every command
    for tens of milliseconds. They live as long as the process; later allocations are collected as usual.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
