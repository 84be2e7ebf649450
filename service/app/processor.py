"""From a delivery to its acknowledgement: decode, order by room, suppress duplicates, handle, publish
the events with confirms, then ack. The ack policy is spelled out here:

- publisher not trusted (its ``user_id`` is not one of ``SIGNALING_TRUSTED_PUBLISHERS``)
                                              -> dead-lettered with ``untrusted_publisher`` before it
                                                 is decoded: nothing called, nobody answered, its body
                                                 never logged; acked
- body is not an envelope, or mis-addressed   -> dead-lettered with the reason (nobody to tell), acked
- envelope fine, payload not a command        -> ``invalid_command`` to the sender, acked
- LiveKit unavailable after retries           -> ``livekit_unavailable`` to the sender, acked
- redelivered command already answered        -> acked, nothing run or sent again
- state store unavailable, state fenced, an event nacked by the broker
                                              -> retried in place for up to TRANSIENT_RETRY_SECONDS
                                                 (the room's later commands wait), then as below
- still failing, or a bug                     -> requeued; on its last allowed delivery dead-lettered
                                                 with the reason instead (never a loop)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from service.app.logging import command_context, update_command_context
from service.app.metrics import Metrics
from service.domain.deadline import command_deadline
from service.domain.errors import StaleState, StoreUnavailable
from service.domain.handler import CommandHandler, Result, error_result
from service.domain.ports import StateStore
from service.domain.publishers import TrustedPublishers
from service.schemas.codec import (
    InvalidPayload,
    MalformedEnvelope,
    decode_command,
    decode_envelope,
    encode_event,
    redact_tokens,
)
from service.schemas.commands import Envelope
from service.schemas.events import EventEnvelope
from service.transport.amqp import (
    CONNECTION_ERRORS,
    AmqpTransport,
    Delivery,
    EventRefused,
    OutgoingEvent,
    UnroutableEvent,
)
from service.transport.ordering import KeyedSerializer

log = logging.getLogger(__name__)

T = TypeVar("T")


class _Abandoned(Exception):
    """The command's delivery can no longer be acknowledged (its channel closed): stop, the broker
    hands it out again."""


def participant_routing_key(room: str, participant: str) -> str:
    return f"room.{room}.participant.{participant}"


def command_routing_key(room: str) -> str:
    return f"room.{room}"


class CommandProcessor:
    def __init__(
        self,
        *,
        handler: CommandHandler,
        store: StateStore,
        transport: AmqpTransport,
        metrics: Metrics,
        command_deadline_seconds: float,
        max_body_bytes: int,
        delivery_limit: int,
        transient_retry_seconds: float,
        trusted_publishers: TrustedPublishers | None = None,
    ) -> None:
        self._handler = handler
        self._store = store
        self._transport = transport
        self._metrics = metrics
        self._deadline = command_deadline_seconds
        self._max_body = max_body_bytes
        self._delivery_limit = delivery_limit
        self.serializer = KeyedSerializer()
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._transient_retry_seconds = transient_retry_seconds
        self._trusted_publishers = trusted_publishers or TrustedPublishers()
        #: Per partition: commands running now, a waiter for "none running", and a gate that holds
        #: commands not yet started while the partition is being released.
        self._running: dict[int, int] = {}
        self._idle_waiters: dict[int, asyncio.Future[None]] = {}
        self._paused: dict[int, asyncio.Event] = {}

    # -- entry point (synchronous, called by the transport in delivery order) ------------------------

    def on_delivery(self, delivery: Delivery) -> None:
        received = time.perf_counter()
        self._metrics.commands_in_flight.inc()
        if not self._trusted_publishers.allows(delivery.user_id):
            # Checked first: a command from an untrusted publisher is neither parsed nor run, and
            # only the reason is logged, never the body.
            reason = self._trusted_publishers.refusal(delivery.user_id)
            with command_context(message_id=delivery.message_id):  # the log line names the dead letter
                self._spawn(self._reject(delivery, reason, "untrusted_publisher"))
            return
        try:
            envelope = decode_envelope(delivery.body, max_bytes=self._max_body)
        except MalformedEnvelope as error:
            self._spawn(self._reject(delivery, f"malformed_envelope: {error}", "malformed_envelope"))
            return
        if delivery.routing_key != command_routing_key(envelope.room):
            # A command acts only in its own room; one published under another room's key would also
            # escape that room's ordering.
            reason = f"room_mismatch: routing key {delivery.routing_key!r} is not room.{envelope.room}"
            self._spawn(self._reject(delivery, reason, "room_mismatch"))
            return
        self.serializer.submit(envelope.room, lambda: self._run(delivery, envelope, received))

    def _spawn(self, job: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(job)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    # -- one command, in its room's order ------------------------------------------------------------

    async def _run(self, delivery: Delivery, envelope: Envelope, received: float) -> None:
        action = "unknown"
        partition = delivery.partition
        with command_context(
            room=envelope.room, participant=envelope.participant, message_id=delivery.message_id
        ):
            try:
                pause = self._paused.get(partition)
                if pause is not None:
                    await pause.wait()  # the partition is being released; see ``release``
                if not self._transport.is_current(delivery):
                    # Released (handed over, shutting down) or its channel died: not started, and the
                    # broker has it back already.
                    return
                self._running[partition] = self._running.get(partition, 0) + 1
                try:
                    action = await self._process(delivery, envelope)
                finally:
                    self._running[partition] -= 1
                    if not self._running[partition]:
                        self._idle(partition)
                self._metrics.command_duration.labels(action).observe(time.perf_counter() - received)
            except _Abandoned:
                log.info("command abandoned: its channel closed; the broker redelivers it")
            except Exception as error:  # a bug, or a transient failure that outlasted its retries
                await self._retry_or_dead_letter(delivery, error, action)
            finally:
                self._metrics.commands_in_flight.dec()

    async def _process(self, delivery: Delivery, envelope: Envelope) -> str:
        """Run, publish, remember, acknowledge; each step retried on its own, so that a failure after
        the events went out does not run the command again. Returns the action for metrics."""
        message_id = delivery.message_id
        if message_id is not None and await self._transient(
            delivery, lambda: self._store.is_processed(message_id)
        ):
            self._metrics.duplicates.inc()
            self._metrics.commands.labels("unknown", "duplicate").inc()
            log.info("duplicate command ignored")
            await self._transport.ack(delivery)
            return "unknown"
        result, action = await self._transient(delivery, lambda: self._execute(envelope))
        await self._publish(delivery, result.events)
        if message_id is not None:
            await self._transient(delivery, lambda: self._store.mark_processed(message_id))
        await self._transport.ack(delivery)
        self._metrics.commands.labels(action, result.outcome).inc()
        log.debug("command handled: %s", result.outcome)
        return action

    async def _transient(self, delivery: Delivery, step: Callable[[], Awaitable[T]]) -> T:
        """Retry a step in place while the state store is down or a write was fenced: the room's later
        commands wait behind it, so order holds (a requeue would put it behind them)."""
        try:  # the common case costs no retry machinery
            if not self._transport.is_current(delivery):
                raise _Abandoned
            return await step()
        except (StoreUnavailable, StaleState) as error:
            log.warning("state store step failed (%s); retrying in place", type(error).__name__)
        retrying = AsyncRetrying(
            retry=retry_if_exception_type((StoreUnavailable, StaleState)),
            wait=wait_exponential_jitter(initial=0.05, max=2.0),
            stop=stop_after_delay(self._transient_retry_seconds),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                if not self._transport.is_current(delivery):
                    raise _Abandoned
                return await step()
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def _execute(self, envelope: Envelope) -> tuple[Result, str]:
        try:
            command = decode_command(envelope.payload)
        except InvalidPayload as error:
            return error_result(envelope, "invalid_command", detail=str(error)), "invalid"
        action: str = type(command).__struct_config__.tag  # type: ignore[assignment]
        update_command_context(action=action)
        with command_deadline(self._deadline):
            return await self._handler.handle(envelope, command), action

    async def _publish(self, delivery: Delivery, events: list[EventEnvelope]) -> None:
        """All of a command's events at once, their confirms awaited together. While the connection is
        down (or its publishing channel not yet restored) the unconfirmed ones are retried, as long as
        the command's own delivery can still be acknowledged. Events the broker nacked are retried the
        same way for up to ``TRANSIENT_RETRY_SECONDS``: during a cluster node's restart a quorum queue
        refuses publishes for seconds, and requeueing the command at once used up its deliveries in
        that time (the rolling-restart test lost commands to the dead-letter queue that way)."""
        event_id_prefix = delivery.message_id or uuid.uuid4().hex
        pending = [
            OutgoingEvent(
                body=encode_event(event),
                routing_key=participant_routing_key(event.room, event.participant),
                type=event.payload.__struct_config__.tag,  # type: ignore[arg-type]
                correlation_id=delivery.message_id,
                message_id=f"{event_id_prefix}:{index}",
            )
            for index, event in enumerate(events)
        ]
        delay = 0.05
        refused_since: float | None = None
        while pending:
            if len(pending) == 1:  # most commands answer one participant: no gather task needed
                results = [await self._send(pending[0])]
            else:
                results = list(
                    await asyncio.gather(*(self._send(event) for event in pending), return_exceptions=True)
                )
            failed = [
                (event, error) for event, error in zip(pending, results, strict=True) if error is not None
            ]
            refused = [error for _, error in failed if isinstance(error, EventRefused)]
            for _, error in failed:
                if not isinstance(error, (*CONNECTION_ERRORS, EventRefused)):
                    raise error
            if refused:
                now = time.monotonic()
                refused_since = now if refused_since is None else refused_since
                if now - refused_since > self._transient_retry_seconds:
                    raise refused[0]  # refused for too long: requeue the command
            pending = [event for event, _ in failed]
            if pending:
                if not self._transport.is_current(delivery):
                    raise _Abandoned
                log.info(
                    "publishing %d event(s) failed (%s); retrying",
                    len(pending),
                    "refused by the broker" if refused else "connection lost",
                )
                await self._transport.wait_connected(delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _send(self, event: OutgoingEvent) -> BaseException | None:
        try:
            await self._transport.publish_event(event)
        except UnroutableEvent:
            # Nobody listens on that participant's key: keep the event, with the reason, but not the
            # access token it may carry (the dead-letter queue has other readers than its recipient).
            try:
                await self._transport.dead_letter(
                    redact_tokens(event.body),
                    reason="unroutable_event",
                    headers={},
                    routing_key=event.routing_key,
                )
            except Exception as error:
                return error
            self._metrics.events_unroutable.labels(event.type).inc()
            self._metrics.dead_letters.labels("unroutable_event").inc()
        except Exception as error:
            return error
        else:
            self._metrics.events_published.labels(event.type).inc()
        return None

    # -- releasing partitions (hand-over, shutdown) --------------------------------------------------

    def _idle(self, partition: int) -> None:
        waiter = self._idle_waiters.pop(partition, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def release(self, partitions: list[int], grace_seconds: float) -> None:
        """Give partitions back without reordering them: hold their commands that have not started,
        let the started ones finish (up to ``grace_seconds``), then close the partitions' channels, so
        the broker takes back everything unacknowledged in queue order; the held commands then see that
        they are no longer ours and end without running."""
        for partition in partitions:
            self._paused.setdefault(partition, asyncio.Event())
        try:
            async with asyncio.timeout(grace_seconds):
                for partition in partitions:
                    while self._running.get(partition):
                        waiter = self._idle_waiters.setdefault(
                            partition, asyncio.get_running_loop().create_future()
                        )
                        await asyncio.shield(waiter)
        except TimeoutError:
            log.warning("grace period over with commands running; the broker will redeliver them")
        for partition in partitions:
            await self._transport.release(partition)
        for partition in partitions:
            gate = self._paused.pop(partition, None)
            if gate is not None:
                gate.set()

    async def hand_over(self, partition: int) -> None:
        """Let another replica's waiting consumer take the partition, then queue up behind it."""
        await self.release([partition], self._deadline)
        await self._transport.subscribe(partition)

    # -- failures ------------------------------------------------------------------------------------

    async def _dead_letter(
        self, delivery: Delivery, reason: str, *, label: str, action: str, outcome: str
    ) -> None:
        """A copy with the reason to the dead-letter exchange (confirmed), then the ack; if even that
        publish fails, the command goes back to the queue instead."""
        try:
            await self._transport.dead_letter(
                delivery.body, reason=reason, headers=delivery.headers, routing_key=delivery.routing_key
            )
        except Exception as error:
            log.warning("could not dead-letter (%s); requeueing", type(error).__name__)
            await self._transport.requeue(delivery)
            return
        self._metrics.dead_letters.labels(label).inc()
        self._metrics.commands.labels(action, outcome).inc()
        await self._transport.ack(delivery)

    async def _reject(self, delivery: Delivery, reason: str, label: str) -> None:
        log.warning("command dead-lettered: %s", reason)
        try:
            await self._dead_letter(delivery, reason, label=label, action="unknown", outcome=label)
        finally:
            self._metrics.commands_in_flight.dec()

    async def _retry_or_dead_letter(self, delivery: Delivery, error: Exception, action: str) -> None:
        reason = f"{type(error).__name__}: {error}"
        if delivery.delivery_count + 1 >= self._delivery_limit:
            log.error("command failed on its last allowed delivery; dead-lettered: %s", reason)
            await self._dead_letter(
                delivery, f"failed: {reason}", label="failed", action=action, outcome="dead_lettered"
            )
            return
        log.warning("command failed, requeued: %s", reason)
        self._metrics.commands.labels(action, "requeued").inc()
        await self._transport.requeue(delivery)

    # -- shutdown ------------------------------------------------------------------------------------

    async def drain(self, grace_seconds: float) -> None:
        """Shutdown: release every partition (commands not started go back to the queue in order,
        started ones finish within the grace period), then wait for the side tasks."""
        await self.release(list(self._transport.subscribed_partitions), grace_seconds)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace_seconds):
                await self.serializer.wait_idle()
                while self._side_tasks:
                    await asyncio.gather(*self._side_tasks, return_exceptions=True)
