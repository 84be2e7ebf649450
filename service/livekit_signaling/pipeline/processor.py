"""From a delivery to its acknowledgement: decode, order by room, suppress duplicates, handle, publish
the events with confirms, then ack.

The ack policy is spelled out here:

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

How a room's commands overlap and still settle in order: ``turns``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential_jitter,
)

from livekit_signaling.domain.deadline import command_deadline
from livekit_signaling.domain.errors import StaleState, StoreUnavailable
from livekit_signaling.domain.handler import CommandHandler, Result, error_result
from livekit_signaling.domain.ports import StateStore
from livekit_signaling.domain.publishers import TrustedPublishers
from livekit_signaling.domain.state import RoomState
from livekit_signaling.pipeline.ordering import Job, KeyedSerializer
from livekit_signaling.pipeline.partitions import PartitionGate
from livekit_signaling.pipeline.ports import CommandTransport, Delivery
from livekit_signaling.pipeline.publisher import EventPublisher, outgoing_events
from livekit_signaling.pipeline.turns import CommandAbandoned, RoomTurn
from livekit_signaling.schemas.codec import InvalidPayload, MalformedEnvelope, decode_command, decode_envelope
from livekit_signaling.schemas.commands import Envelope
from livekit_signaling.schemas.routing import command_routing_key
from livekit_signaling.telemetry.logging import command_context, update_command_context
from livekit_signaling.telemetry.metrics import Children, Metrics
from livekit_signaling.telemetry.tracing import NO_TRACING, Tracing

log = logging.getLogger(__name__)

T = TypeVar("T")


class CommandProcessor:
    def __init__(
        self,
        *,
        handler: CommandHandler,
        store: StateStore,
        transport: CommandTransport,
        metrics: Metrics,
        command_deadline_seconds: float,
        max_body_bytes: int,
        delivery_limit: int,
        transient_retry_seconds: float,
        trusted_publishers: TrustedPublishers | None = None,
        tracing: Tracing = NO_TRACING,
    ) -> None:
        self._handler = handler
        self._store = store
        self._transport = transport
        self._metrics = metrics
        self._command_counts = Children(metrics.commands)
        self._command_durations = Children(metrics.command_duration)
        self._deadline = command_deadline_seconds
        self._max_body = max_body_bytes
        self._delivery_limit = delivery_limit
        self.serializer = KeyedSerializer()
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._transient_retry_seconds = transient_retry_seconds
        self._trusted_publishers = trusted_publishers or TrustedPublishers()
        self._tracing = tracing
        self._events = EventPublisher(
            transport=transport, metrics=metrics, transient_retry_seconds=transient_retry_seconds
        )
        self._partitions = PartitionGate()
        #: Per room, its latest command that is not settled yet; the commands started and not settled
        #: by message id; and every command's task.
        self._last_turn: dict[str, RoomTurn] = {}
        self._unsettled_ids: dict[str, RoomTurn] = {}
        self._commands: set[asyncio.Task[None]] = set()

    # -- entry point (synchronous, called by the transport in delivery order) ------------------------

    def on_delivery(self, delivery: Delivery) -> None:
        received = time.perf_counter()
        self._metrics.commands_in_flight.inc()
        delivery.trace = self._tracing.command(delivery)
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
            reason = (
                f"room_mismatch: routing key {delivery.routing_key!r} is not "
                f"{command_routing_key(envelope.room)}"
            )
            self._spawn(self._reject(delivery, reason, "room_mismatch"))
            return
        self.serializer.submit(envelope.room, lambda: self._run(delivery, envelope, received))

    def submit_in_room_order(self, room: str, partition: int, job: Job) -> None:
        """Run ``job`` between two of the room's commands, as one of its partition's running commands:
        it waits while the partition is being released, and a release waits for it to finish, so the
        next replica to hold the partition runs nothing of the room before it ends."""

        async def on_partition() -> None:
            await self._partitions.wait_open(partition)
            with self._partitions.running(partition):
                await job()

        self.serializer.submit(room, on_partition)

    def _spawn(self, job: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(job)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    # -- one command, in its room's order ------------------------------------------------------------

    async def _run(self, delivery: Delivery, envelope: Envelope, received: float) -> None:
        """The room's turn for this command (a job of the serializer): start it, and return as soon as
        the room's next command may start, while this one goes on to its confirms and its ack."""
        room = envelope.room
        turn = RoomTurn(previous=self._last_turn.get(room))
        self._last_turn[room] = turn
        task = asyncio.create_task(self._command(delivery, envelope, received, turn))
        self._commands.add(task)
        task.add_done_callback(self._commands.discard)
        await turn.started_next

    async def _command(self, delivery: Delivery, envelope: Envelope, received: float, turn: RoomTurn) -> None:
        action = "unknown"
        partition = delivery.partition
        room, participant = envelope.room, envelope.participant
        with (
            delivery.trace.activate(room),
            command_context(room=room, participant=participant, message_id=delivery.message_id),
        ):
            try:
                await self._partitions.wait_open(partition)
                if not self._transport.is_current(delivery):
                    # Released (handed over, shutting down) or its channel died: not started, and the
                    # broker has it back already.
                    return
                with self._partitions.running(partition):
                    action = await self._process(delivery, envelope, turn)
                self._command_durations(action).observe(
                    time.perf_counter() - received, delivery.trace.exemplar()
                )
            except CommandAbandoned:
                log.info("command abandoned: its channel closed; the broker redelivers it")
            except Exception as error:  # a bug, or a transient failure that outlasted its retries
                turn.let_next_start()
                await turn.after_previous()
                await self._retry_or_dead_letter(delivery, error, action)
            finally:
                self._finished(delivery)
                turn.settle()
                if self._last_turn.get(envelope.room) is turn:
                    del self._last_turn[envelope.room]
                if delivery.message_id is not None and self._unsettled_ids.get(delivery.message_id) is turn:
                    del self._unsettled_ids[delivery.message_id]

    async def _process(self, delivery: Delivery, envelope: Envelope, turn: RoomTurn) -> str:
        """Run, publish, remember, acknowledge; each step retried on its own, so that a failure after
        the events went out does not run the command again. The room's next command starts once the
        events are handed to the channel; the record and the ack wait for the room's previous command.
        Returns the action for metrics."""
        message_id = delivery.message_id
        if message_id is not None:
            # A copy of a command still in flight here (published twice, or redelivered while the first
            # delivery waits for its confirms): once that one is settled it is recorded, or not done.
            earlier = self._unsettled_ids.get(message_id)
            if earlier is not None:
                await asyncio.shield(earlier.settled)
            self._unsettled_ids[message_id] = turn
        sender_state: RoomState | None = None
        if message_id is not None:
            # The duplicate check, and the read of the sender's entry most commands start with.
            sender_state = await self._transient(
                delivery,
                lambda: self._store.load_unless_processed(message_id, envelope.room, (envelope.participant,)),
            )
        if message_id is not None and sender_state is None:
            turn.let_next_start()
            self._metrics.duplicates.inc()
            self._count(delivery, "unknown", "duplicate")
            log.info("duplicate command ignored")
            await turn.after_previous()
            await self._transport.ack(delivery)
            return "unknown"

        def execute() -> Awaitable[tuple[Result, str]]:
            nonlocal sender_state
            # Used once: a retry (state fenced, store down) reads the room again.
            loaded, sender_state = sender_state, None
            return self._execute(envelope, delivery.partition, loaded)

        result, action = await self._transient(delivery, execute)
        events = outgoing_events(delivery, result.events)
        with delivery.trace.publication(events) as traced:
            publication = await self._events.hand_over(events, turn)
            turn.let_next_start()
            await self._events.confirm(delivery, events, publication, turn, traced)
        if message_id is not None:
            await self._transient(delivery, lambda: self._store.mark_processed(message_id))
        await self._transport.ack(delivery)
        self._count(delivery, action, result.outcome)
        log.debug("command handled: %s", result.outcome)
        return action

    async def _transient(self, delivery: Delivery, step: Callable[[], Awaitable[T]]) -> T:
        """Retry a step in place while the state store is down or a write was fenced: the room's later
        commands wait behind it, so order holds (a requeue would put it behind them)."""
        try:  # the common case costs no retry machinery
            if not self._transport.is_current(delivery):
                raise CommandAbandoned
            return await step()
        except (StoreUnavailable, StaleState) as error:
            # The store's message says what failed (and the fix for a configuration error), no secrets.
            log.warning("state store step failed (%s: %s); retrying in place", type(error).__name__, error)
            delivery.trace.retried("state_store", type(error).__name__)

        def note_retry(state: RetryCallState) -> None:
            failure = state.outcome.exception() if state.outcome is not None else None
            delivery.trace.retried("state_store", type(failure).__name__)

        retrying = AsyncRetrying(
            retry=retry_if_exception_type((StoreUnavailable, StaleState)),
            wait=wait_exponential_jitter(multiplier=0.05, max=2.0),
            stop=stop_after_delay(self._transient_retry_seconds),
            before_sleep=note_retry,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                if not self._transport.is_current(delivery):
                    raise CommandAbandoned
                return await step()
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def _execute(
        self, envelope: Envelope, partition: int, sender_state: RoomState | None
    ) -> tuple[Result, str]:
        try:
            command = decode_command(envelope.payload)
        except InvalidPayload as error:
            return error_result(envelope, "invalid_command", detail=str(error)), "invalid"
        action: str = type(command).__struct_config__.tag  # type: ignore[assignment]
        update_command_context(action=action)
        with command_deadline(self._deadline):
            result = await self._handler.handle(
                envelope, command, partition=partition, sender_state=sender_state
            )
            return result, action

    # -- releasing partitions (hand-over, shutdown) --------------------------------------------------

    async def release(self, partitions: list[int], grace_seconds: float) -> None:
        """Give partitions back without reordering them (``PartitionGate.closing``)."""
        async with self._partitions.closing(partitions, grace_seconds):
            for partition in partitions:
                await self._transport.release(partition)

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
        self._count(delivery, action, outcome)
        await self._transport.ack(delivery)

    async def _reject(self, delivery: Delivery, reason: str, label: str) -> None:
        with delivery.trace.activate(None):
            log.warning("command dead-lettered: %s", reason)
            try:
                await self._dead_letter(delivery, reason, label=label, action="unknown", outcome=label)
            finally:
                self._finished(delivery)

    async def _retry_or_dead_letter(self, delivery: Delivery, error: Exception, action: str) -> None:
        reason = f"{type(error).__name__}: {error}"
        if delivery.delivery_count + 1 >= self._delivery_limit:
            log.error("command failed on its last allowed delivery; dead-lettered: %s", reason)
            await self._dead_letter(
                delivery, f"failed: {reason}", label="failed", action=action, outcome="dead_lettered"
            )
            return
        log.warning("command failed, requeued: %s", reason)
        self._count(delivery, action, "requeued")
        await self._transport.requeue(delivery)

    # -- what every command ends with ----------------------------------------------------------------

    def _count(self, delivery: Delivery, action: str, outcome: str) -> None:
        self._command_counts(action, outcome).inc()
        delivery.trace.settled(action, outcome)

    def _finished(self, delivery: Delivery) -> None:
        self._metrics.commands_in_flight.dec()
        delivery.trace.end()

    # -- shutdown ------------------------------------------------------------------------------------

    async def drain(self, grace_seconds: float) -> None:
        """Shutdown: release every partition (commands not started go back to the queue in order,
        started ones finish within the grace period), then wait for the side tasks."""
        await self.release(list(self._transport.subscribed_partitions), grace_seconds)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace_seconds):
                await self.serializer.wait_idle()
                while self._commands or self._side_tasks:
                    await asyncio.gather(*self._commands, *self._side_tasks, return_exceptions=True)
