"""Acknowledgements of one consuming channel, coalesced: commands that complete in the same turn of the
event loop are acknowledged with one ``basic.ack`` frame where their delivery tags allow it.

``basic.ack`` with ``multiple`` acknowledges every unsettled delivery up to its tag, so it is sent only
for a run of tags that starts at the channel's oldest unsettled delivery and is done throughout; a done
tag above a delivery still being handled (out-of-order completion across rooms) is acknowledged on its
own, so that no command waits for another room's. Tags are settled in ascending order within a flush,
and a room's commands acknowledge in the room's order (``pipeline.turns``), which their tags follow.

Pure bookkeeping: the transport sends the frames ``take`` returns, in that order.
"""

from __future__ import annotations

from collections import deque


class AckCoalescer:
    """The unsettled deliveries of one channel, in tag order, and those done and waiting for their
    ack."""

    __slots__ = ("_done", "_unsettled")

    def __init__(self) -> None:
        self._unsettled: deque[int] = deque()
        self._done: set[int] = set()

    def delivered(self, tag: int) -> None:
        """A delivery handed to the service; the broker numbers a channel's deliveries upwards."""
        unsettled = self._unsettled
        if unsettled and tag < unsettled[-1]:  # not expected: kept correct anyway
            unsettled.insert(next(i for i, t in enumerate(unsettled) if t > tag), tag)
        else:
            unsettled.append(tag)

    def done(self, tag: int) -> bool:
        """The delivery is to be acknowledged; True when it is the first since the last ``take``
        (the caller schedules one)."""
        first = not self._done
        self._done.add(tag)
        return first

    def settled_otherwise(self, tag: int) -> None:
        """The delivery was rejected or requeued (its frame sent already): no ``multiple`` ack may
        cover it any more, and none needs to."""
        self._done.discard(tag)
        if tag in self._unsettled:
            self._unsettled.remove(tag)

    def take(self) -> list[tuple[int, bool]]:
        """The ack frames for every delivery done so far, as ``(tag, multiple)``, in ascending order:
        one ``multiple`` ack for the done run at the front of the unsettled deliveries, single acks for
        the done ones behind a delivery still being handled."""
        done = self._done
        if not done:
            return []
        unsettled = self._unsettled
        frames: list[tuple[int, bool]] = []
        run_end = 0
        run_length = 0
        while unsettled and unsettled[0] in done:
            run_end = unsettled.popleft()
            done.discard(run_end)
            run_length += 1
        if run_length:
            frames.append((run_end, run_length > 1))
        if done:
            for tag in sorted(done):
                frames.append((tag, False))
                if tag in unsettled:  # else not delivered through ``delivered`` (not expected)
                    unsettled.remove(tag)
            done.clear()
        return frames

    @property
    def unsettled(self) -> int:
        return len(self._unsettled)
