"""From a delivery to its acknowledgement: decode, order by room, suppress duplicates, handle, publish
the events with confirms, then ack. The ack policy is spelled out here:

- body is not an envelope, or mis-addressed   -> dead-lettered with the reason (nobody to tell), acked
- envelope fine, payload not a command        -> ``invalid_command`` to the sender, acked
- LiveKit unavailable after retries           -> ``livekit_unavailable`` to the sender, acked
- redelivered command already answered        -> acked, nothing run or sent again
- state store unavailable, state fenced, publish failed, a bug
                                              -> requeued; on its last allowed delivery dead-lettered
                                                 with the reason instead (never a loop)
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from service.app.logging import command_context, update_command_context
from service.app.metrics import Metrics
from service.domain.deadline import command_deadline
from service.domain.handler import CommandHandler, Result, error_result
from service.domain.ports import StateStore
from service.schemas.codec import (
    InvalidPayload,
    MalformedEnvelope,
    decode_command,
    decode_envelope,
    encode_event,
)
from service.schemas.commands import Envelope
from service.schemas.events import EventEnvelope
from service.transport.amqp import AmqpTransport, Delivery, OutgoingEvent, UnroutableEvent
from service.transport.ordering import KeyedSerializer

log = logging.getLogger(__name__)


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
        self._draining = False
        #: Partitions that delivered something since the flag was last cleared (balance heuristics).
        self.partitions_seen: set[int] = set()

    # -- entry point (synchronous, called by the transport in delivery order) ------------------------

    def on_delivery(self, delivery: Delivery) -> None:
        received = time.perf_counter()
        self.partitions_seen.add(delivery.partition)
        self._metrics.commands_in_flight.inc()
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
        with command_context(
            room=envelope.room, participant=envelope.participant, message_id=delivery.message_id
        ):
            try:
                if self._draining or not self._transport.is_current(delivery):
                    # Shutting down, handed over, or its channel died: not started, so back to the queue
                    # (a dead channel's messages are redelivered by the broker anyway).
                    await self._transport.requeue(delivery)
                    return
                if delivery.message_id is not None and await self._store.is_processed(delivery.message_id):
                    self._metrics.duplicates.inc()
                    self._metrics.commands.labels("unknown", "duplicate").inc()
                    log.info("duplicate command ignored")
                    await self._transport.ack(delivery)
                    return
                result, action = await self._execute(envelope)
                await self._publish(result.events, delivery.message_id)
                if delivery.message_id is not None:
                    await self._store.mark_processed(delivery.message_id)
                await self._transport.ack(delivery)
                self._metrics.commands.labels(action, result.outcome).inc()
                self._metrics.command_duration.labels(action).observe(time.perf_counter() - received)
                log.debug("command handled: %s", result.outcome)
            except Exception as error:  # store down, fenced write, broken publish, or a bug
                await self._retry_or_dead_letter(delivery, error, action)
            finally:
                self._metrics.commands_in_flight.dec()

    async def _execute(self, envelope: Envelope) -> tuple[Result, str]:
        try:
            command = decode_command(envelope.payload)
        except InvalidPayload as error:
            return error_result(envelope, "invalid_command", detail=str(error)), "invalid"
        action: str = type(command).__struct_config__.tag  # type: ignore[assignment]
        update_command_context(action=action)
        with command_deadline(self._deadline):
            return await self._handler.handle(envelope, command), action

    async def _publish(self, events: list[EventEnvelope], correlation_id: str | None) -> None:
        """All of a command's events at once; their confirms are awaited together."""
        event_id_prefix = correlation_id or uuid.uuid4().hex
        outgoing = [
            OutgoingEvent(
                body=encode_event(event),
                routing_key=participant_routing_key(event.room, event.participant),
                type=event.payload.__struct_config__.tag,  # type: ignore[arg-type]
                correlation_id=correlation_id,
                message_id=f"{event_id_prefix}:{index}",
            )
            for index, event in enumerate(events)
        ]
        results = await asyncio.gather(
            *(self._transport.publish_event(event) for event in outgoing), return_exceptions=True
        )
        for event, outcome in zip(outgoing, results, strict=True):
            if isinstance(outcome, UnroutableEvent):
                # Nobody listens on that participant's key: keep the event, with the reason.
                self._metrics.events_unroutable.labels(event.type).inc()
                await self._transport.dead_letter(
                    event.body, reason="unroutable_event", headers={}, routing_key=event.routing_key
                )
                self._metrics.dead_letters.labels("unroutable_event").inc()
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                self._metrics.events_published.labels(event.type).inc()

    # -- failures ------------------------------------------------------------------------------------

    async def _reject(self, delivery: Delivery, reason: str, label: str) -> None:
        log.warning("command dead-lettered: %s", reason)
        try:
            await self._transport.dead_letter(
                delivery.body, reason=reason, headers=delivery.headers, routing_key=delivery.routing_key
            )
        except Exception as error:
            log.warning("could not dead-letter (%s); requeueing", type(error).__name__)
            await self._transport.requeue(delivery)
        else:
            self._metrics.dead_letters.labels(label).inc()
            self._metrics.commands.labels("unknown", label).inc()
            await self._transport.ack(delivery)
        finally:
            self._metrics.commands_in_flight.dec()

    async def _retry_or_dead_letter(self, delivery: Delivery, error: Exception, action: str) -> None:
        reason = f"{type(error).__name__}: {error}"
        if delivery.delivery_count + 1 >= self._delivery_limit:
            log.error("command failed on its last allowed delivery; dead-lettered: %s", reason)
            try:
                await self._transport.dead_letter(
                    delivery.body,
                    reason=f"failed: {reason}",
                    headers=delivery.headers,
                    routing_key=delivery.routing_key,
                )
            except Exception:
                await self._transport.requeue(delivery)
                return
            self._metrics.dead_letters.labels("failed").inc()
            self._metrics.commands.labels(action, "dead_lettered").inc()
            await self._transport.ack(delivery)
            return
        log.warning("command failed, requeued: %s", reason)
        self._metrics.commands.labels(action, "requeued").inc()
        await self._transport.requeue(delivery)

    # -- shutdown ------------------------------------------------------------------------------------

    async def drain(self, grace_seconds: float) -> bool:
        """Stop starting commands (they go back to the queue) and wait for those in flight."""
        self._draining = True
        try:
            async with asyncio.timeout(grace_seconds):
                await self.serializer.wait_idle()
                while self._side_tasks:
                    await asyncio.gather(*self._side_tasks, return_exceptions=True)
        except TimeoutError:
            return False
        return True
