"""A command's place in its room's order.

A room's commands take effect one after another, in arrival order, but overlap where order allows: once
a command has handed its events to the publishing channel, the room's next command starts while the
first still waits for its confirms. Each command is recorded as processed and acknowledged only after
its own confirms and after the room's earlier commands were settled, so a replica that dies leaves a
prefix of the room's commands done and the rest to be redelivered in order, never a hole.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from livekit_signaling.pipeline.ports import Publication, PublishingChannel


class CommandAbandoned(Exception):
    """The command's delivery can no longer be acknowledged (its channel closed): stop, the broker
    hands it out again."""


def _future() -> asyncio.Future[None]:
    return asyncio.get_running_loop().create_future()


@dataclass(eq=False, slots=True)
class RoomTurn:
    """A command's turn in its room, from when the room lets it start until it is settled."""

    #: The room's previous command, while it is not settled.
    previous: RoomTurn | None
    #: Done once the room's next command may start: this one has handed its events to the channel (or
    #: ended without events).
    started_next: asyncio.Future[None] = field(default_factory=_future)
    #: Done once this command is acknowledged, requeued, dead-lettered or abandoned.
    settled: asyncio.Future[None] = field(default_factory=_future)
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
