"""From a delivery to its acknowledgement: decode, order by room, suppress duplicates, handle, publish
the events with confirms, then ack.

A room's commands take effect one after another, in arrival order, but they overlap where order allows
(issue 14): once a command has handed its events to the publishing channel, the room's next command
starts, while the first still waits for its confirms. Each command is recorded as processed and
acknowledged only after its own confirms and after the room's earlier commands were settled, so acks
(and the duplicate-suppression records) follow the room's order too: a replica that dies leaves behind
a prefix of the room's commands done and the rest to be redelivered in order, never a hole.

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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from livekit_signaling.app.logging import command_context, update_command_context
from livekit_signaling.app.metrics import Metrics
from livekit_signaling.domain.deadline import command_deadline
from livekit_signaling.domain.errors import StaleState, StoreUnavailable
from livekit_signaling.domain.handler import CommandHandler, Result, error_result
from livekit_signaling.domain.ports import StateStore
from livekit_signaling.domain.publishers import TrustedPublishers
from livekit_signaling.schemas.codec import (
    InvalidPayload,
    MalformedEnvelope,
    decode_command,
    decode_envelope,
    encode_event,
    redact_tokens,
)
from livekit_signaling.schemas.commands import Envelope
from livekit_signaling.schemas.events import EventEnvelope
from livekit_signaling.transport.amqp import (
    CONNECTION_ERRORS,
    AmqpTransport,
    Delivery,
    EventRefused,
    OutgoingEvent,
    Publication,
    PublishingChannel,
    UnroutableEvent,
)
from livekit_signaling.transport.ordering import KeyedSerializer

log = logging.getLogger(__name__)

T = TypeVar("T")


class _Abandoned(Exception):
    """The command's delivery can no longer be acknowledged (its channel closed): stop, the broker
    hands it out again."""


@dataclass(eq=False, slots=True)
class _Turn:
    """A command's place in its room's order, from when the room lets it start until it is settled."""

    #: The room's previous command, while it is not settled.
    previous: _Turn | None
    #: Done once the room's next command may start: this one has handed its events to the channel (or
    #: ended without events).
    started_next: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    #: Done once this command is acknowledged, requeued, dead-lettered or abandoned.
    settled: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    #: Whether it has events to publish, and where they went first: the room's next command's events
    #: must leave after them.
    has_events: bool = False
    publication: Publication | None = None

    def may_publish_on(self, channel: PublishingChannel) -> bool:
        """Whether this command's events, published on ``channel`` now, leave after the previous
        command's: it is settled, had none, or its events are queued on this same open channel."""
        previous = self.previous
        if previous is None or previous.settled.done() or not previous.has_events:
            return True
        return previous.publication is not None and previous.publication.is_ahead_on(channel)

    def let_next_start(self) -> None:
        if not self.started_next.done():
            self.started_next.set_result(None)

    async def after_previous(self) -> None:
        """Until the room's previous command is settled."""
        if self.previous is not None:
            await asyncio.shield(self.previous.settled)
            self.previous = None  # no chain of settled turns kept alive

    def settle(self) -> None:
        self.let_next_start()
        if not self.settled.done():
            self.settled.set_result(None)
        self.previous = None


def _failure(confirm: asyncio.Future[None]) -> BaseException | None:
    """How a publish ended: None when confirmed; a publish cancelled with its closing channel counts
    as lost with the connection (it is published again), not as this command's cancellation."""
    if confirm.cancelled():
        return ConnectionError("publish cancelled: its channel closed")
    return confirm.exception()


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
        #: Per room, its latest command that is not settled yet; the commands started and not settled
        #: by message id; and every command's task.
        self._last_turn: dict[str, _Turn] = {}
        self._unsettled_ids: dict[str, _Turn] = {}
        self._commands: set[asyncio.Task[None]] = set()

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
        """The room's turn for this command (a job of the serializer): start it, and return as soon as
        the room's next command may start, while this one goes on to its confirms and its ack."""
        room = envelope.room
        turn = _Turn(previous=self._last_turn.get(room))
        self._last_turn[room] = turn
        task = asyncio.create_task(self._command(delivery, envelope, received, turn))
        self._commands.add(task)
        task.add_done_callback(self._commands.discard)
        await turn.started_next

    async def _command(self, delivery: Delivery, envelope: Envelope, received: float, turn: _Turn) -> None:
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
                    action = await self._process(delivery, envelope, turn)
                finally:
                    self._running[partition] -= 1
                    if not self._running[partition]:
                        self._idle(partition)
                self._metrics.command_duration.labels(action).observe(time.perf_counter() - received)
            except _Abandoned:
                log.info("command abandoned: its channel closed; the broker redelivers it")
            except Exception as error:  # a bug, or a transient failure that outlasted its retries
                turn.let_next_start()
                await turn.after_previous()
                await self._retry_or_dead_letter(delivery, error, action)
            finally:
                self._metrics.commands_in_flight.dec()
                turn.settle()
                if self._last_turn.get(envelope.room) is turn:
                    del self._last_turn[envelope.room]
                if delivery.message_id is not None and self._unsettled_ids.get(delivery.message_id) is turn:
                    del self._unsettled_ids[delivery.message_id]

    async def _process(self, delivery: Delivery, envelope: Envelope, turn: _Turn) -> str:
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
        if message_id is not None and await self._transient(
            delivery, lambda: self._store.is_processed(message_id)
        ):
            turn.let_next_start()
            self._metrics.duplicates.inc()
            self._metrics.commands.labels("unknown", "duplicate").inc()
            log.info("duplicate command ignored")
            await turn.after_previous()
            await self._transport.ack(delivery)
            return "unknown"
        result, action = await self._transient(delivery, lambda: self._execute(envelope))
        events = self._outgoing(delivery, result.events)
        publication = await self._hand_over(delivery, events, turn)
        turn.let_next_start()
        await self._confirm(delivery, events, publication, turn)
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
            # The store's message says what failed (and the fix for a configuration error), no secrets.
            log.warning("state store step failed (%s: %s); retrying in place", type(error).__name__, error)
        retrying = AsyncRetrying(
            retry=retry_if_exception_type((StoreUnavailable, StaleState)),
            wait=wait_exponential_jitter(multiplier=0.05, max=2.0),
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

    @staticmethod
    def _outgoing(delivery: Delivery, events: list[EventEnvelope]) -> list[OutgoingEvent]:
        event_id_prefix = delivery.message_id or uuid.uuid4().hex
        return [
            OutgoingEvent(
                body=encode_event(event),
                routing_key=participant_routing_key(event.room, event.participant),
                type=event.payload.__struct_config__.tag,  # type: ignore[arg-type]
                correlation_id=delivery.message_id,
                message_id=f"{event_id_prefix}:{index}",
            )
            for index, event in enumerate(events)
        ]

    async def _hand_over(
        self, delivery: Delivery, events: list[OutgoingEvent], turn: _Turn
    ) -> Publication | None:
        """Hand the events to the publishing channel, behind the room's previous command's. While that
        one is not settled, publishing now is only safe on the channel its events went to, and while
        that channel is open: events of a lost channel are published again once their command's turn
        comes, so then this command waits until the previous one is settled. None when there is no
        channel at all (``_confirm`` publishes them, in turn)."""
        if not events:
            return None
        turn.has_events = True
        try:
            channel = await self._transport.publishing_channel()
            if not turn.may_publish_on(channel):
                await turn.after_previous()
                channel = await self._transport.publishing_channel()
        except CONNECTION_ERRORS:
            return None
        publication = turn.publication = self._transport.publish_on(channel, events)
        return publication

    async def _confirm(
        self, delivery: Delivery, events: list[OutgoingEvent], publication: Publication | None, turn: _Turn
    ) -> None:
        """The events' confirms, then the room's previous command settled; events lost with a channel
        are published again (in the room's order, since the previous command is settled), for as long
        as the command's own delivery can still be acknowledged. Events the broker nacked are published
        again the same way for up to ``TRANSIENT_RETRY_SECONDS``, then the nack raises (requeue the
        command): while a cluster node restarts, a quorum queue refuses publishes for seconds, and
        requeueing at once used up a command's deliveries in that time (the rolling-restart test lost
        commands to the dead-letter queue that way)."""
        pending, refused = await self._outcomes(events, publication)
        await turn.after_previous()
        delay = 0.05
        refused_since: float | None = None
        while pending:
            if refused is not None:
                now = time.monotonic()
                refused_since = now if refused_since is None else refused_since
                if now - refused_since > self._transient_retry_seconds:
                    raise refused  # refused for too long: requeue the command
            if not self._transport.is_current(delivery):
                raise _Abandoned
            log.info(
                "publishing %d event(s) failed (%s); retrying",
                len(pending),
                "refused by the broker" if refused is not None else "connection lost",
            )
            await self._transport.wait_connected(delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
            try:
                channel = await self._transport.publishing_channel()
            except CONNECTION_ERRORS:
                continue
            pending, refused = await self._outcomes(pending, self._transport.publish_on(channel, pending))

    async def _outcomes(
        self, events: Sequence[OutgoingEvent], publication: Publication | None
    ) -> tuple[list[OutgoingEvent], EventRefused | None]:
        """Wait for the confirms of ``events`` (all of them unsent when ``publication`` is None),
        dead-letter those the broker could not route, and return those to publish again (lost with the
        connection or refused by the broker), with a refusal if there was one."""
        if publication is None:
            return list(events), None
        confirms = publication.confirms
        if len(confirms) == 1:  # most commands answer one participant: no gather needed
            try:
                await confirms[0]
            except asyncio.CancelledError:
                if not confirms[0].cancelled():
                    raise  # this command was cancelled, not its publish
            except Exception:  # noqa: S110 - read from the future below
                pass
        else:
            await asyncio.gather(*confirms, return_exceptions=True)
        outcomes = [_failure(confirm) for confirm in confirms]
        again: list[OutgoingEvent] = []
        refused: EventRefused | None = None
        published: Counter[str] = Counter()  # counted once per type: a fan-out has thousands of events
        for event, outcome in zip(events, outcomes, strict=True):
            if outcome is None:
                published[event.type] += 1
                continue
            failure = (
                await self._dead_letter_event(event) if isinstance(outcome, UnroutableEvent) else outcome
            )
            if failure is None:
                continue
            if isinstance(failure, EventRefused):
                refused = failure
            elif not isinstance(failure, CONNECTION_ERRORS):
                raise failure  # the broker failed otherwise: requeue the command
            again.append(event)
        for event_type, count in published.items():
            self._metrics.events_published.labels(event_type).inc(count)
        return again, refused

    async def _dead_letter_event(self, event: OutgoingEvent) -> BaseException | None:
        """Nobody listens on that participant's key: keep the event, with the reason, but not the
        access token it may carry (the dead-letter queue has other readers than its recipient)."""
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
                while self._commands or self._side_tasks:
                    await asyncio.gather(*self._commands, *self._side_tasks, return_exceptions=True)
