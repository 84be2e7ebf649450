"""Prometheus metrics: one prefix, base units, no room or participant ids as labels.

A ``Metrics`` object takes the registry it registers in, so tests and several services in one process
never collide on the global registry.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "livekit_signaling"

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: A reconcile pass spreads its rooms over the interval (10 s by default), so it takes about that long.
_PASS_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 12.5, 15.0, 20.0, 30.0, 60.0, 120.0)


M = TypeVar("M", Counter, Gauge, Histogram)


class Children(Generic[M]):
    """A labelled metric's children, each looked up once: ``labels()`` checks and joins the values and
    takes the metric's lock on every call, which the command path would pay per command. For labels
    with few values (actions, outcomes, event types), never ids."""

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: M) -> None:
        self._metric: M = metric
        self._children: dict[tuple[str, ...], M] = {}

    def __call__(self, *values: str) -> M:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.commands = Counter(
            f"{PREFIX}_commands_total",
            "Commands handled, by action and outcome.",
            ["action", "outcome"],
            registry=r,
        )
        self.command_duration = Histogram(
            f"{PREFIX}_command_duration_seconds",
            "From delivery to acknowledgement of a command, by action.",
            ["action"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.livekit_requests = Counter(
            f"{PREFIX}_livekit_requests_total",
            "LiveKit API attempts by method and outcome (ok, not_found, rejected, unavailable, timeout, "
            "transport_error).",
            ["method", "outcome"],
            registry=r,
        )
        self.livekit_request_duration = Histogram(
            f"{PREFIX}_livekit_request_duration_seconds",
            "Duration of one LiveKit API attempt, by method.",
            ["method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.livekit_retries = Counter(
            f"{PREFIX}_livekit_retries_total",
            "LiveKit API attempts that were retried, by method.",
            ["method"],
            registry=r,
        )
        self.events_published = Counter(
            f"{PREFIX}_events_published_total",
            "Events published and confirmed, by type.",
            ["type"],
            registry=r,
        )
        self.events_unroutable = Counter(
            f"{PREFIX}_events_unroutable_total",
            "Events the broker could not route to any queue (dead-lettered), by type.",
            ["type"],
            registry=r,
        )
        self.dead_letters = Counter(
            f"{PREFIX}_dead_letters_total",
            "Messages sent to the dead-letter exchange, by reason.",
            ["reason"],
            registry=r,
        )
        self.duplicates = Counter(
            f"{PREFIX}_duplicate_commands_total",
            "Redelivered commands recognised by message id and not run again.",
            registry=r,
        )
        self.amqp_reconnects = Counter(
            f"{PREFIX}_amqp_reconnects_total", "Reconnections to RabbitMQ.", registry=r
        )
        self.amqp_connected = Gauge(f"{PREFIX}_amqp_connected", "1 while connected to RabbitMQ.", registry=r)
        self.amqp_refused = Gauge(
            f"{PREFIX}_amqp_refused",
            "1 while RabbitMQ answers but refuses the login, vhost, permissions or topology (see the log).",
            registry=r,
        )
        self.amqp_node = Gauge(
            f"{PREFIX}_amqp_node",
            "1 for the RabbitMQ node (host:port/vhost of AMQP_URL, no credentials) this replica is "
            "connected to, 0 for the other configured nodes.",
            ["node"],
            registry=r,
        )
        self.ready = Gauge(f"{PREFIX}_ready", "1 while the replica takes commands.", registry=r)
        self.partitions_active = Gauge(
            f"{PREFIX}_partitions_active",
            "Partition queues on which this replica is the single active consumer.",
            registry=r,
        )
        self.partition_active = Gauge(
            f"{PREFIX}_partition_active",
            "1 for each partition on which this replica is the active consumer.",
            ["partition"],
            registry=r,
        )
        self.partitions_resubscribed = Counter(
            f"{PREFIX}_partitions_resubscribed_total",
            "Partitions subscribed to again because they had no consumer of this replica for a balancing "
            "interval while connected (the broker cancelled it, or its channel was not restored).",
            registry=r,
        )
        self.partitions_total = Gauge(
            f"{PREFIX}_partitions", "Partition queues the commands are spread over.", registry=r
        )
        self.restricted_rooms = Gauge(
            f"{PREFIX}_rooms_with_microphone_restrictions",
            "Rooms whose microphone restrictions are enabled (from the state store).",
            registry=r,
        )
        self.commands_in_flight = Gauge(
            f"{PREFIX}_commands_in_flight", "Commands received and not yet acknowledged.", registry=r
        )
        self.webhooks = Counter(
            f"{PREFIX}_webhooks_total",
            "LiveKit webhooks received, by event and outcome.",
            ["event", "outcome"],
            registry=r,
        )
        self.reconcile_rooms = Gauge(
            f"{PREFIX}_reconcile_rooms",
            "Rooms with something to enforce on the partitions this replica holds, as of its last "
            "reconcile pass.",
            registry=r,
        )
        self.reconcile_rooms_checked = Counter(
            f"{PREFIX}_reconcile_rooms_checked_total",
            "Rooms compared with LiveKit, by outcome (in_line, repaired, gone, failed, not_held).",
            ["outcome"],
            registry=r,
        )
        self.reconcile_repairs = Counter(
            f"{PREFIX}_reconcile_repairs_total",
            "Differences with LiveKit the reconciler repaired, by kind (microphone, screen_share, camera, "
            "unknown_identity).",
            ["kind"],
            registry=r,
        )
        self.reconcile_pass_duration = Histogram(
            f"{PREFIX}_reconcile_pass_duration_seconds",
            "From the start of a reconcile pass to the end of its last room's check; about the interval "
            "while the replica keeps up.",
            buckets=_PASS_BUCKETS,
            registry=r,
        )
