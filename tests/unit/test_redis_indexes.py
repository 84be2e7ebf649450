"""The indexes a cluster store writes after a room's script (store/indexes.py): which entries a write
implies, how often they are refreshed, and that a failed one is tried again."""

from __future__ import annotations

import time

import pytest

from livekit_signaling.domain.state import RoomDecisions
from livekit_signaling.store.indexes import IndexesAfterWrites, IndexUpdate
from livekit_signaling.store.keys import ClusterKeys

KEYS = ClusterKeys("p", partitions=4)
IDLE = 600.0
GRACE = 90.0


@pytest.fixture
def indexes() -> IndexesAfterWrites:
    return IndexesAfterWrites(KEYS, room_idle_seconds=IDLE, lift_grace_seconds=GRACE)


def restricted() -> RoomDecisions:
    return RoomDecisions(microphone_restrictions=["m"])


def entries(updates: list[IndexUpdate]) -> list[tuple[str, bool]]:
    return [(update.key, update.until is not None) for update in updates]


def written(indexes: IndexesAfterWrites, updates: list[IndexUpdate]) -> None:
    for update in indexes.with_pending(updates):
        indexes.written(update)


def test_a_restriction_lists_the_room_and_later_writes_leave_the_entries_alone(
    indexes: IndexesAfterWrites,
) -> None:
    updates = indexes.after_write("r", restricted(), decisions_written=True, partition=1)
    assert entries(updates) == [("p:restricted", True), ("p:reconcile:4:1", True)]
    assert all(abs((update.until or 0) - (time.time() + IDLE)) < 5 for update in updates)  # room's expiry
    written(indexes, updates)
    # A participant's entry written a moment later: nothing to refresh yet.
    assert indexes.after_write("r", restricted(), decisions_written=False, partition=1) == []


def test_lifted_decisions_take_the_room_off_the_count_and_keep_it_listed_for_the_grace(
    indexes: IndexesAfterWrites,
) -> None:
    written(indexes, indexes.after_write("r", restricted(), decisions_written=True, partition=1))
    lifted = indexes.after_write("r", RoomDecisions(), decisions_written=True, partition=1)
    assert entries(lifted) == [("p:restricted", False), ("p:reconcile:4:1", True)]
    reconcile = lifted[1]
    assert reconcile.until is not None and lifted[0].until is None
    assert not reconcile.listed  # listed for the grace only: later writes do not refresh it
    written(indexes, lifted)
    assert indexes.after_write("r", RoomDecisions(), decisions_written=False, partition=1) == []


def test_a_room_without_decisions_touches_no_index(indexes: IndexesAfterWrites) -> None:
    assert indexes.after_write("r", RoomDecisions(), decisions_written=False, partition=2) == []


def test_a_failed_update_is_tried_again_with_the_next_and_the_room_is_written_again(
    indexes: IndexesAfterWrites,
) -> None:
    updates = indexes.after_write("r", restricted(), decisions_written=True, partition=1)
    for update in indexes.with_pending(updates):
        indexes.failed(update)
    # The next index write of any room (or a reconcile pass, with none of its own) carries them.
    retried = indexes.with_pending([])
    assert retried == updates
    for update in retried:
        indexes.failed(update)
    # The room's own next write writes its entries afresh, replacing the pending ones.
    again = indexes.after_write("r", restricted(), decisions_written=False, partition=1)
    assert entries(again) == [("p:restricted", True), ("p:reconcile:4:1", True)]
    assert indexes.with_pending(again) == again
    written(indexes, again)
    assert indexes.with_pending([]) == []


def test_a_deletion_takes_the_room_off_every_index(indexes: IndexesAfterWrites) -> None:
    updates = indexes.after_delete("r", partition=3)
    assert entries(updates) == [("p:restricted", False), ("p:reconcile:4:3", False)]
