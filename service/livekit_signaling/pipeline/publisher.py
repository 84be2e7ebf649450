"""A command's events, from handing them to the broker to their confirms: in the room's order, published
again when a channel is lost or the broker refuses them, dead-lettered (without tokens) when nobody is
bound to their routing key."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import Sequence

from livekit_signaling.pipeline.ports import (
    CommandTransport,
    Delivery,
    EventRefused,
    OutgoingEvent,
    Publication,
    UnroutableEvent,
)
from livekit_signaling.pipeline.turns import CommandAbandoned, RoomTurn
from livekit_signaling.schemas.codec import encode_event, redact_tokens
from livekit_signaling.schemas.events import EventEnvelope
from livekit_signaling.schemas.routing import participant_routing_key
from livekit_signaling.telemetry.metrics import Children, Metrics
from livekit_signaling.telemetry.tracing import NO_TRACING, TraceSpan

log = logging.getLogger(__name__)


def _failure(confirm: asyncio.Future[None]) -> BaseException | None:
    """How a publish ended: None when confirmed; a publish cancelled with its closing channel counts
    as lost with the connection (it is published again), not as this command's cancellation."""
    if confirm.cancelled():
        return ConnectionError("publish cancelled: its channel closed")
    return confirm.exception()


async def _confirmed(confirm: asyncio.Future[None]) -> bool:
    """Whether the publish was confirmed; how it failed otherwise is read from the future."""
    try:
        await confirm
    except asyncio.CancelledError:
        if not confirm.cancelled():
            raise  # this command was cancelled, not its publish
        return False
    except Exception:
        return False
    return True


def outgoing_events(delivery: Delivery, events: list[EventEnvelope]) -> list[OutgoingEvent]:
    """The events as messages, each addressed to its participant, correlated with the command."""
    event_id_prefix = delivery.message_id or uuid.uuid4().hex
    return [
        OutgoingEvent(
            body=encode_event(event),
            routing_key=participant_routing_key(event.room, event.participant),
            type=event.payload.__struct_config__.tag,  # type: ignore[arg-type]
            correlation_id=delivery.message_id,
            message_id=f"{event_id_prefix}:{index}",
            headers=delivery.trace.event_headers,
        )
        for index, event in enumerate(events)
    ]


class EventPublisher:
    def __init__(
        self, *, transport: CommandTransport, metrics: Metrics, transient_retry_seconds: float
    ) -> None:
        self._transport = transport
        self._metrics = metrics
        self._published = Children(metrics.events_published)
        self._transient_retry_seconds = transient_retry_seconds

    async def hand_over(self, events: list[OutgoingEvent], turn: RoomTurn) -> Publication | None:
        """Hand the events to the publishing channel, behind the room's previous command's. While that
        one is not settled, publishing now is only safe on the channel its events went to, and while
        that channel is open: events of a lost channel are published again once their command's turn
        comes, so then this command waits until the previous one is settled. None when there is no
        channel at all (``confirm`` publishes them, in turn)."""
        if not events:
            return None
        turn.has_events = True
        try:
            channel = await self._transport.publishing_channel()
            if not turn.may_publish_on(channel):
                await turn.after_previous()
                channel = await self._transport.publishing_channel()
        except ConnectionError:
            return None
        publication = turn.publication = self._transport.publish_on(channel, events)
        return publication

    async def confirm(
        self,
        delivery: Delivery,
        events: list[OutgoingEvent],
        publication: Publication | None,
        turn: RoomTurn,
        traced: TraceSpan = NO_TRACING,
    ) -> None:
        """The events' confirms, then the room's previous command settled; events lost with a channel
        are published again (in the room's order, since the previous command is settled), for as long
        as the command's own delivery can still be acknowledged. Events the broker nacked are published
        again the same way for up to ``TRANSIENT_RETRY_SECONDS``, then the nack raises (requeue the
        command): while a cluster node restarts, a quorum queue refuses publishes for seconds, and
        requeueing at once would use up a command's deliveries in that time. ``traced`` (the
        publication's span) gets the retries and the dead-lettered events."""
        pending, refused = await self._outcomes(events, publication, traced)
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
                raise CommandAbandoned
            log.info(
                "publishing %d event(s) failed (%s); retrying",
                len(pending),
                "refused by the broker" if refused is not None else "connection lost",
            )
            traced.retried("publish", "EventRefused" if refused is not None else "ChannelLost")
            await self._transport.wait_connected(delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
            try:
                channel = await self._transport.publishing_channel()
            except ConnectionError:
                continue
            pending, refused = await self._outcomes(
                pending, self._transport.publish_on(channel, pending), traced
            )

    async def _outcomes(
        self, events: Sequence[OutgoingEvent], publication: Publication | None, traced: TraceSpan
    ) -> tuple[list[OutgoingEvent], EventRefused | None]:
        """Wait for the confirms of ``events`` (all of them unsent when ``publication`` is None),
        dead-letter those the broker could not route, and return those to publish again (lost with the
        connection or refused by the broker), with a refusal if there was one."""
        if publication is None:
            return list(events), None
        confirms = publication.confirms
        if len(confirms) == 1:  # most commands answer one participant: no gather needed
            if await _confirmed(confirms[0]):
                self._published(events[0].type).inc()
                return [], None
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
                await self._dead_letter_event(event, traced)
                if isinstance(outcome, UnroutableEvent)
                else outcome
            )
            if failure is None:
                continue
            if isinstance(failure, EventRefused):
                refused = failure
            elif not isinstance(failure, ConnectionError):
                raise failure  # the broker failed otherwise: requeue the command
            again.append(event)
        for event_type, count in published.items():
            self._published(event_type).inc(count)
        return again, refused

    async def _dead_letter_event(self, event: OutgoingEvent, traced: TraceSpan) -> BaseException | None:
        """Nobody listens on that participant's key: keep the event, with the reason, but not the
        access token it may carry (the dead-letter queue has other readers than its recipient)."""
        try:
            await self._transport.dead_letter(
                redact_tokens(event.body),
                reason="unroutable_event",
                headers=event.headers or {},
                routing_key=event.routing_key,
            )
        except Exception as error:
            return error
        self._metrics.events_unroutable.labels(event.type).inc()
        self._metrics.dead_letters.labels("unroutable_event").inc()
        traced.failed("unroutable_event")
        return None
