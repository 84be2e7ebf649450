"""Reconciliation with LiveKit against small fakes: what each identity should hold and which repair
brings it there, which rooms a replica checks, and that a check keeps its room's command order."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Sequence

from livekit_signaling.domain.permissions import ALL_SOURCES, PublishPolicy
from livekit_signaling.domain.ports import ConnectedParticipant
from livekit_signaling.domain.reconciliation import (
    has_standing_decisions,
    issued_to,
    plan_repairs,
)
from livekit_signaling.domain.state import RoomDecisions, RoomState, RosterEntry
from livekit_signaling.pipeline.balancer import PartitionBalancer
from livekit_signaling.pipeline.ordering import Job, KeyedSerializer
from livekit_signaling.pipeline.ports import Delivery
from livekit_signaling.reconcile.recent import RecentRepairs
from livekit_signaling.reconcile.reconciler import Checker, Reconciler
from livekit_signaling.reconcile.room_check import RoomCheck, RoomChecker
from livekit_signaling.store.memory import MemoryStateStore
from livekit_signaling.telemetry.metrics import Metrics
from tests.unit.fakes import FakeLiveKit
from tests.unit.test_processor import FakeTransport, processor_of

USER = RosterEntry(role="user", kind="user")
MODERATOR = RosterEntry(role="moderator", kind="user")
SCREEN = frozenset({"screen_share", "screen_share_audio"})
CAMERA_AND_MICROPHONE = frozenset({"camera", "microphone"})


def connected(
    identity: str, sources: frozenset[str] = ALL_SOURCES, kind: str = "standard"
) -> ConnectedParticipant:
    return ConnectedParticipant(identity, sources, (), None, kind)


def planned(
    room: RoomState, *participants: ConnectedParticipant, policy: PublishPolicy | None = None
) -> dict[str, tuple[frozenset[str] | None, tuple[str, ...]]]:
    repairs = plan_repairs(room, participants, policy or PublishPolicy(), disconnect_unknown=True)
    return {repair.participant.identity: (repair.sources, repair.drift) for repair in repairs}


# -- what each identity should hold ----------------------------------------------------------------


def test_restrictions_take_the_microphone_from_restricted_participants_only() -> None:
    room = RoomState(
        version=1,
        decisions=RoomDecisions(microphone_restrictions=["speaker"]),
        participants={"mod": MODERATOR, "speaker": USER, "late": USER},
    )
    repairs = planned(room, connected("mod"), connected("speaker"), connected("late"))
    # The moderator is exempt, the unrestricted participant keeps its microphone.
    assert repairs == {"late": (ALL_SOURCES - {"microphone"}, ("microphone",))}


def test_screen_share_grants_and_revocations_are_enforced_both_ways() -> None:
    room = RoomState(
        version=1,
        decisions=RoomDecisions(screen_share={"granted": True, "revoked": False}),
        participants={"granted": USER, "revoked": USER, "default": USER, "mod": MODERATOR},
    )
    policy = PublishPolicy(screen_share_requires_permission=True)
    repairs = planned(
        room,
        connected("granted", CAMERA_AND_MICROPHONE),  # a token minted before the grant
        connected("revoked"),  # a token minted before the revocation
        connected("default", CAMERA_AND_MICROPHONE),
        connected("mod"),
        policy=policy,
    )
    assert repairs == {
        "granted": (ALL_SOURCES, ("screen_share",)),
        "revoked": (CAMERA_AND_MICROPHONE, ("screen_share",)),
    }


def test_identities_the_room_does_not_know_are_disconnected_but_livekit_workers_only_restricted() -> None:
    room = RoomState(
        version=1,
        decisions=RoomDecisions(microphone_restrictions=[]),
        participants={"p": RosterEntry(role="user", kind="user", popouts=1)},
    )
    repairs = planned(
        room,
        connected("p", ALL_SOURCES - {"microphone"}),
        connected("p.popout1", frozenset()),  # issued, publishes nothing: in line
        connected("p.popout2", frozenset()),  # never issued
        connected("left"),  # a client left behind after leave
        connected("left.popout1", frozenset()),  # the popout of a participant who left
        connected("recorder", CAMERA_AND_MICROPHONE, kind="egress"),  # LiveKit's own
    )
    assert repairs == {
        "p.popout2": (None, ("unknown_identity",)),
        "left": (None, ("unknown_identity",)),
        "left.popout1": (None, ("unknown_identity",)),
        "recorder": (frozenset({"camera"}), ("microphone",)),
    }
    # Without disconnecting, an unknown identity only loses its microphone, and gains nothing.
    kept = plan_repairs(
        room, [connected("left", CAMERA_AND_MICROPHONE)], PublishPolicy(), disconnect_unknown=False
    )
    assert [(r.participant.identity, r.sources) for r in kept] == [("left", frozenset({"camera"}))]


def test_a_repair_names_every_kind_it_mends() -> None:
    room = RoomState(
        version=1,
        decisions=RoomDecisions(microphone_restrictions=[], screen_share={"p": False}),
        participants={"p": USER},
    )
    assert planned(room, connected("p")) == {"p": (frozenset({"camera"}), ("microphone", "screen_share"))}


def test_standing_decisions_and_whose_identity_it_is() -> None:
    assert not has_standing_decisions(RoomDecisions())
    assert has_standing_decisions(RoomDecisions(microphone_restrictions=[]))  # enabled with nobody
    assert has_standing_decisions(RoomDecisions(screen_share={"p": True}))
    assert [issued_to(i) for i in ("p", "p.popout3", "p.other")] == ["p", "p", "p.other"]


# -- one room's check --------------------------------------------------------------------------------


async def test_a_room_is_checked_in_pages_and_its_repairs_carried_out() -> None:
    store = MemoryStateStore(dedup_window_seconds=60, room_idle_seconds=3600)
    state = await store.load("r")
    state.participants = {f"u{n}": USER for n in range(5)}
    for name in state.participants:
        await store.save_entry("r", state, name)
    state.decisions.microphone_restrictions = ["u0"]
    await store.save_decisions("r", state)
    livekit = FakeLiveKit()
    livekit.connected = {f"u{n}": connected(f"u{n}") for n in range(5)} | {"gone": connected("gone")}
    checker = RoomChecker(
        livekit=livekit, store=store, policy=PublishPolicy(), disconnect_unknown=True, roster_page=2
    )
    check = await checker.check("r")
    assert (check.outcome, check.connected, len(check.repairs)) == ("repaired", 6, 5)
    assert sorted(call for call in livekit.calls if call[0] != "list_participants") == [
        ("remove_participant", "gone"),
        *(("set_publish_sources", f"u{n}", "camera,screen_share,screen_share_audio") for n in range(1, 5)),
    ]


# -- which rooms, and when ---------------------------------------------------------------------------


class ListedRooms:
    def __init__(self, rooms: list[tuple[str, int]]) -> None:
        self.rooms = rooms

    async def rooms_to_reconcile(self, partitions: Collection[int]) -> list[tuple[str, int]]:
        return [(room, partition) for room, partition in self.rooms if partition in partitions]


class RecordingChecker:
    """Checks nothing; records when each room's check started and how many ran at once."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.started: dict[str, float] = {}
        self.running = 0
        self.most_at_once = 0
        self._seconds = seconds

    async def check(self, room: str) -> RoomCheck:
        self.started[room] = time.monotonic()
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        await asyncio.sleep(self._seconds)
        self.running -= 1
        return RoomCheck("in_line", 0)


def reconciler(
    checker: Checker,
    rooms: list[tuple[str, int]],
    held: Callable[[], Collection[int]],
    *,
    interval: float = 0.2,
    rooms_in_flight: int = 8,
) -> Reconciler:
    serializer = KeyedSerializer()

    def in_room_order(room: str, _partition: int, job: Job) -> None:
        serializer.submit(room, job)

    return Reconciler(
        checker=checker,
        rooms=ListedRooms(rooms),
        held_partitions=held,
        in_room_order=in_room_order,
        interval_seconds=interval,
        rooms_in_flight=rooms_in_flight,
        deadline_seconds=2,
        metrics=Metrics(),
        recent=RecentRepairs(),
    )


async def test_a_pass_checks_the_rooms_of_held_partitions_spread_over_the_interval() -> None:
    checker = RecordingChecker()
    rooms = [(f"r{n}", n % 3) for n in range(6)]
    outcomes = await reconciler(checker, rooms, lambda: {0, 1}, interval=0.4).run_pass()
    assert sorted(checker.started) == ["r0", "r1", "r3", "r4"]  # partition 2 is another replica's
    assert outcomes == {"in_line": 4}
    starts = [checker.started[room] for room in sorted(checker.started)]
    assert starts == sorted(starts)
    # Four rooms over 0.4 s: the last starts three quarters in (a lower bound: load only delays it).
    assert starts[-1] - starts[0] >= 0.3


async def test_a_room_whose_partition_moved_before_its_turn_is_not_checked() -> None:
    checker = RecordingChecker()
    held = {0}
    checks = reconciler(checker, [("r", 0)], lambda: held)
    held.clear()  # handed over between the listing and the room's turn
    assert await checks.check_in_room_order("r", 0) == "not_held"
    assert checker.started == {}


async def test_rooms_checked_at_once_are_bounded() -> None:
    checker = RecordingChecker(seconds=0.05)
    rooms = [(f"r{n}", 0) for n in range(8)]
    await reconciler(checker, rooms, lambda: {0}, interval=0.01, rooms_in_flight=2).run_pass()
    assert len(checker.started) == 8
    assert checker.most_at_once == 2


# -- in the room's command order ---------------------------------------------------------------------


class HeldUpdates(FakeLiveKit):
    """A LiveKit whose permission updates wait until the test lets them through."""

    def __init__(self) -> None:
        super().__init__()
        self.update_started = asyncio.Event()
        self.let_through = asyncio.Event()

    async def set_publish_sources(
        self, room: str, changes: Sequence[tuple[ConnectedParticipant, frozenset[str]]]
    ) -> None:
        self.update_started.set()
        await self.let_through.wait()
        await super().set_publish_sources(room, changes)
        for participant, sources in changes:  # LiveKit now holds what was set
            self.connected[participant.identity] = connected(participant.identity, sources)


async def test_a_moderator_decision_that_arrives_during_a_repair_is_the_one_that_holds() -> None:
    store = MemoryStateStore(dedup_window_seconds=60, room_idle_seconds=3600)
    livekit = HeldUpdates()
    transport = FakeTransport()
    processor = processor_of(store, transport, livekit=livekit)
    state = await store.load("room-1")
    state.participants = {"mod": MODERATOR, "late": USER}
    await store.save_entry("room-1", state, "mod")
    await store.save_entry("room-1", state, "late")
    state.decisions.microphone_restrictions = []
    await store.save_decisions("room-1", state, partition=0)
    # A token minted before the restriction: LiveKit lets "late" use the microphone.
    livekit.connected = {"late": connected("late")}
    checks = Reconciler(
        checker=RoomChecker(livekit=livekit, store=store, policy=PublishPolicy(), disconnect_unknown=True),
        rooms=store,
        held_partitions=lambda: {0},
        in_room_order=processor.submit_in_room_order,
        interval_seconds=1,
        rooms_in_flight=1,
        deadline_seconds=2,
        metrics=Metrics(),
        recent=RecentRepairs(),
    )
    check = asyncio.create_task(checks.check_in_room_order("room-1", 0))
    await asyncio.wait_for(livekit.update_started.wait(), 2)  # the repair is in flight
    body = {
        "room": "room-1",
        "participant": "mod",
        "role": "moderator",
        "payload": {"action": "disable_microphone_restrictions"},
    }
    processor.on_delivery(
        Delivery(
            body=json.dumps(body).encode(),
            routing_key="room.room-1",
            message_id=uuid.uuid4().hex,
            partition=0,
            delivery_count=0,
        )
    )
    await asyncio.sleep(0.05)
    assert not transport.published  # the decision waits for the repair
    livekit.let_through.set()
    assert await check == "repaired"
    await transport.until(lambda: bool(transport.confirms))
    for confirm in transport.confirms:
        confirm.set_result(None)
    await transport.until(lambda: bool(transport.acked))
    # The repair took the microphone, then the later decision gave it back: the decision holds.
    updates = [call for call in livekit.calls if call[0] == "set_publish_sources"]
    assert updates == [
        ("set_publish_sources", "late", "camera,screen_share,screen_share_audio"),
        ("set_publish_sources", "late", "camera,microphone,screen_share,screen_share_audio"),
    ]
    assert livekit.connected["late"].publish_sources == ALL_SOURCES


# -- which partitions a replica holds ----------------------------------------------------------------


class Registry:
    def __init__(self, replicas: list[str]) -> None:
        self.replicas = replicas

    async def heartbeat(self, replica: str) -> list[str]:
        return self.replicas

    async def leave(self, replica: str) -> None:
        pass


def balancer_of(
    transport: FakeTransport,
    *,
    partitions: int,
    interval_seconds: float,
    hand_over: Callable[[int], Awaitable[None]] = lambda _partition: asyncio.sleep(0),
    registry: Registry | None = None,
    metrics: Metrics | None = None,
) -> PartitionBalancer:
    """Replica "me"'s balancer over ``transport``."""
    return PartitionBalancer(
        transport=transport,
        hand_over=hand_over,
        registry=registry,
        replica="me",
        partitions=partitions,
        interval_seconds=interval_seconds,
        metrics=metrics or Metrics(),
    )


async def test_a_replica_holds_its_active_partitions_or_all_once_it_is_known_to_be_alone() -> None:
    transport = FakeTransport(active_partitions={1})
    registry = Registry(["me", "other"])

    def balancer(registry: Registry | None) -> PartitionBalancer:
        return balancer_of(transport, partitions=4, interval_seconds=0.05, registry=registry)

    # Without a registry (no Redis) there is only one replica.
    assert list(balancer(None).held_partitions()) == [0, 1, 2, 3]
    shared = balancer(registry)
    await shared.step()
    assert shared.held_partitions() == {1}
    registry.replicas = ["me"]
    await shared.step()
    assert shared.held_partitions() == {1}  # the other may not have registered yet
    await asyncio.sleep(0.1)  # a whole registration lifetime (two intervals) alone
    await shared.step()
    assert list(shared.held_partitions()) == [0, 1, 2, 3]
    transport.is_connected = False
    assert list(shared.held_partitions()) == []


async def test_a_partition_without_our_consumer_for_a_whole_round_is_subscribed_to_again() -> None:
    """The broker cancelled our consumer (its queue deleted) or a channel was not restored: the next
    round but one subscribes again (``hand_over``: release, then subscribe, which declares the queue);
    a partition missing for one round only (a channel aio-pika is still restoring) is left alone."""
    transport = FakeTransport(active_partitions={0, 1})
    handed_over: list[int] = []

    async def hand_over(partition: int) -> None:
        handed_over.append(partition)
        transport.unconsumed.remove(partition)

    metrics = Metrics()
    balancer = balancer_of(
        transport, partitions=2, interval_seconds=5.0, hand_over=hand_over, metrics=metrics
    )
    transport.unconsumed = [1]
    await balancer.step()
    assert handed_over == []  # one round: it may be on its way back
    await balancer.step()
    assert handed_over == [1]
    assert metrics.registry.get_sample_value("livekit_signaling_partitions_resubscribed_total") == 1
    await balancer.step()
    assert handed_over == [1]  # consumed again: nothing more

    transport.unconsumed = [0]
    await balancer.step()
    transport.unconsumed = []  # restored by aio-pika in between
    await balancer.step()
    transport.unconsumed = [0]  # missing again, but not for two rounds in a row
    await balancer.step()
    assert handed_over == [1]


async def test_a_round_that_fails_does_not_end_the_rounds() -> None:
    """Subscribing again can fail (the connection goes mid-round): the next round tries again, the
    balancer's task does not end."""
    transport = FakeTransport(active_partitions={0})
    transport.unconsumed = [0]
    attempts: list[int] = []
    subscribed = asyncio.Event()

    async def hand_over(partition: int) -> None:
        attempts.append(partition)
        if len(attempts) == 1:
            raise ConnectionError("connection lost mid-round")
        transport.unconsumed.remove(partition)
        subscribed.set()

    balancer = balancer_of(transport, partitions=1, interval_seconds=0.01, hand_over=hand_over)
    rounds = asyncio.create_task(balancer.run())
    try:
        async with asyncio.timeout(2):
            await subscribed.wait()
        assert attempts == [0, 0]
        assert not rounds.done()
    finally:
        rounds.cancel()
