"""Settings from the environment, each defined once here with its default and its documentation.

Every ``*_FILE`` variant (``LIVEKIT_API_SECRET_FILE`` …) reads the value from a file, as Kubernetes mounts
secrets. ``livekit-signaling settings`` prints the table the docs' settings page carries.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from livekit_signaling.store.target import InvalidRedisTarget, RedisTarget, check_key_prefix, redis_target
from livekit_signaling.telemetry.tracing.setup import EXPORTERS, OTLP_PROTOCOL, SAMPLERS, TracingConfig
from livekit_signaling.transport.brokers import split_broker_urls


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names it (and never shows a secret's value)."""


def _env(name: str, doc: str, *, default: Any = None, secret: bool = False, required: bool = False) -> Any:
    return field(
        default=default,
        metadata={"env": name, "doc": doc, "secret": secret, "required": required},
    )


def _url(value: str) -> str:
    parts = urlsplit(value)
    if not parts.scheme or not parts.netloc:
        raise ValueError("expected an absolute URL such as http://host:port")
    return value


def _url_with_scheme(*schemes: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in schemes or not (parts.netloc or parts.path):
            raise ValueError(f"expected a {' or '.join(s + '://' for s in schemes)} URL")
        return value

    return parse


def _broker_urls(value: str) -> str:
    split_broker_urls(value)  # each address checked; the errors name positions, never URLs
    return value


def _positive_float(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise ValueError("must be greater than 0")
    return number


def _positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError("must be greater than 0")
    return number


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected true or false")


def _user_names(value: str) -> frozenset[str]:
    names = [name.strip() for name in value.split(",")]
    if not all(names):
        raise ValueError("expected comma-separated RabbitMQ user names, none of them empty")
    return frozenset(names)


def _pem_certificates(value: str) -> str:
    if "-----BEGIN CERTIFICATE-----" not in value:
        raise ValueError("expected PEM certificates (for a file's path use REDIS_TLS_CA_FILE)")
    return value + "\n"


def _non_negative_float(value: str) -> float:
    number = float(value)
    if number < 0:
        raise ValueError("must be 0 or more")
    return number


def _non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError("must be 0 or more")
    return number


def _host_ports(value: str) -> tuple[tuple[str, int], ...]:
    """``host:port,host:port`` (``[v6]:port`` too) as (host, port) pairs."""
    addresses = []
    for item in value.split(","):
        host, colon, port = item.strip().rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected host:port[,host:port...], got {item.strip()!r}")
        addresses.append((host, int(port)))
    return tuple(addresses)


def _ratio(value: str) -> float:
    number = float(value)
    if not 0 <= number <= 1:
        raise ValueError("expected a ratio from 0 to 1")
    return number


def _otlp_protocol(value: str) -> str:
    if value != OTLP_PROTOCOL:
        raise ValueError(f"only {OTLP_PROTOCOL} is supported (the Collector's OTLP/HTTP port, 4318)")
    return value


def _key_values(value: str) -> tuple[tuple[str, str], ...]:
    """``key=value,key=value`` as OpenTelemetry's ``OTEL_EXPORTER_OTLP_HEADERS`` and
    ``OTEL_RESOURCE_ATTRIBUTES`` write it (values URL-encoded)."""
    headers = []
    for item in value.split(","):
        key, equals, text = item.partition("=")
        if not equals or not key.strip():
            raise ValueError("expected key=value[,key=value...]")
        headers.append((unquote(key.strip()), unquote(text.strip())))
    return tuple(headers)


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return value

    return parse


@dataclass(frozen=True, kw_only=True)
class Settings:
    amqp_url: str = _env(
        "AMQP_URL",
        "RabbitMQ URL, or the URLs of a cluster's nodes separated by commas (tried in turn: the first "
        "that answers, the next when a connection is lost); `amqps://` for TLS (docs: operations, TLS). "
        "Credentials in it are never logged.",
        default="amqp://guest:guest@127.0.0.1:5672/",
        secret=True,
    )
    amqp_heartbeat_seconds: int = _env(
        "AMQP_HEARTBEAT_SECONDS",
        "AMQP heartbeat; a dead connection that sends nothing is noticed within 3 x (heartbeat + 1) s "
        "(aiormq's rule).",
        default=5,
    )
    amqp_reconnect_seconds: float = _env(
        "AMQP_RECONNECT_SECONDS", "Pause between reconnection attempts to RabbitMQ.", default=2.0
    )
    amqp_connect_timeout_seconds: float = _env(
        "AMQP_CONNECT_TIMEOUT_SECONDS",
        "Bound on one connection attempt to one node, so that an unreachable node does not hold up "
        "the move to the next.",
        default=5.0,
    )
    amqp_prefetch: int = _env(
        "AMQP_PREFETCH", "Unacknowledged commands a replica holds per partition queue.", default=32
    )
    livekit_url: str = _env("LIVEKIT_URL", "LiveKit server API URL (http/https/ws/wss).", required=True)
    livekit_api_key: str = _env("LIVEKIT_API_KEY", "LiveKit API key.", required=True)
    livekit_api_secret: str = _env(
        "LIVEKIT_API_SECRET", "LiveKit API secret; never logged.", required=True, secret=True
    )
    livekit_public_url: str | None = _env(
        "LIVEKIT_PUBLIC_URL", "URL handed to clients in credentials (default: `LIVEKIT_URL`)."
    )
    livekit_service_url: str | None = _env(
        "LIVEKIT_SERVICE_URL", "Private URL handed to `sip` and `recorder` participants only (optional)."
    )
    livekit_request_timeout_seconds: float = _env(
        "LIVEKIT_REQUEST_TIMEOUT_SECONDS", "Bound on one LiveKit API attempt.", default=2.0
    )
    livekit_retry_attempts: int = _env(
        "LIVEKIT_RETRY_ATTEMPTS",
        "Attempts per LiveKit call on transport errors, timeouts and 5xx (never on 4xx).",
        default=4,
    )
    livekit_max_concurrent_requests: int = _env(
        "LIVEKIT_MAX_CONCURRENT_REQUESTS",
        "LiveKit calls in flight at once, across all commands.",
        default=64,
    )
    livekit_room_cache_seconds: float = _env(
        "LIVEKIT_ROOM_CACHE_SECONDS",
        "How long a room this replica created is trusted to exist, sparing CreateRoom on every join and "
        "token refresh (0 = call it every time).",
        default=60.0,
    )
    command_deadline_seconds: float = _env(
        "COMMAND_DEADLINE_SECONDS",
        "A command's LiveKit work ends by then; the sender gets `livekit_unavailable` if it could not.",
        default=8.0,
    )
    token_ttl_seconds: int = _env(
        "TOKEN_TTL_SECONDS",
        "Lifetime of minted access tokens. Short, since LiveKit cannot revoke a token; it refreshes "
        "connected clients' tokens itself.",
        default=60,
    )
    screen_share_requires_permission: bool = _env(
        "SCREEN_SHARE_REQUIRES_PERMISSION",
        "Non-moderators may share their screen only once granted.",
        default=False,
    )
    command_exchange: str = _env(
        "SIGNALING_COMMAND_EXCHANGE",
        "Topic exchange commands arrive on (`room.<room>`).",
        default="livekit.commands",
    )
    event_exchange: str = _env(
        "SIGNALING_EVENT_EXCHANGE",
        "Topic exchange events go to (`room.<room>.participant.<participant>`).",
        default="livekit.events",
    )
    queue: str = _env(
        "SIGNALING_QUEUE",
        "Name of the command queue; with partitions, the prefix of `<queue>.<n>` and of "
        "`<queue>.partitions` (the consistent-hash exchange).",
        default="livekit-signaling",
    )
    partitions: int = _env(
        "SIGNALING_PARTITIONS",
        "Partition queues commands are spread over by room (1 = one queue bound directly; more needs "
        "the `rabbitmq_consistent_hash_exchange` plugin). Every replica must use the same number.",
        default=16,
    )
    dead_letter_exchange: str = _env(
        "SIGNALING_DEAD_LETTER_EXCHANGE",
        "Fanout exchange (and queue of the same name) for commands that cannot be handled.",
        default="livekit-signaling.dead-letter",
    )
    delivery_limit: int = _env(
        "SIGNALING_DELIVERY_LIMIT", "Deliveries of one command before it is dead-lettered.", default=5
    )
    max_body_bytes: int = _env(
        "SIGNALING_MAX_BODY_BYTES", "Larger command bodies are dead-lettered unparsed.", default=65536
    )
    trusted_publishers: frozenset[str] | None = _env(
        "SIGNALING_TRUSTED_PUBLISHERS",
        "Comma-separated RabbitMQ users whose commands are acted on (the AMQP `user_id` property, which "
        "RabbitMQ checks against the publishing connection); any other command is dead-lettered with "
        "`untrusted_publisher`. Unset = every publisher.",
    )
    http_host: str = _env(
        "SIGNALING_HTTP_HOST",
        "Address of the HTTP endpoints (`dev`: 127.0.0.1 unless set, since its console shows tokens).",
        default="0.0.0.0",
    )
    http_port: int = _env(
        "SIGNALING_HTTP_PORT",
        "`/metrics`, `/healthz`, `/readyz`, `/webhook`; with `dev` also the console at `/` "
        "(0 = pick a free port).",
        default=8080,
    )
    redis_url: str | None = _env(
        "REDIS_URL",
        "Shared state for several replicas (`redis://`, `rediss://` for TLS); unset, and no "
        "`REDIS_SENTINELS` or `REDIS_CLUSTER_NODES` = process memory (one replica).",
        secret=True,
    )
    redis_sentinels: tuple[tuple[str, int], ...] | None = _env(
        "REDIS_SENTINELS",
        "Instead of `REDIS_URL`: the Sentinels of a Sentinel-managed Redis, `host:port,host:port,...`; "
        "the service follows the master they name through fail-overs.",
    )
    redis_cluster_nodes: tuple[tuple[str, int], ...] | None = _env(
        "REDIS_CLUSTER_NODES",
        "Instead of `REDIS_URL`: seed nodes of a Redis Cluster, `host:port,host:port,...` (any of its "
        "nodes; the client learns the rest and follows fail-overs and resharding).",
    )
    redis_sentinel_master: str = _env(
        "REDIS_SENTINEL_MASTER", "Name of the master the Sentinels monitor.", default="mymaster"
    )
    redis_username: str | None = _env(
        "REDIS_USERNAME",
        "ACL user of the Redis nodes (Redis 6+), with `REDIS_PASSWORD`; unset = the `default` user. With "
        "Sentinel or a cluster, or with a `REDIS_URL` that names none.",
    )
    redis_password: str | None = _env(
        "REDIS_PASSWORD",
        "Password of the Redis nodes (with Sentinel or a cluster, or with a `REDIS_URL` that carries none).",
        secret=True,
    )
    redis_sentinel_username: str | None = _env(
        "REDIS_SENTINEL_USERNAME",
        "ACL user of the Sentinels themselves (Redis 6.2+), with `REDIS_SENTINEL_PASSWORD`.",
    )
    redis_sentinel_password: str | None = _env(
        "REDIS_SENTINEL_PASSWORD", "Password of the Sentinels themselves, if they require one.", secret=True
    )
    redis_tls: bool = _env(
        "REDIS_TLS",
        "With `REDIS_SENTINELS`: TLS to the Sentinels and to the master they name; with "
        "`REDIS_CLUSTER_NODES`: to every node (a `REDIS_URL` says it by its scheme, `rediss://`).",
        default=False,
    )
    redis_tls_ca: str | None = _env(
        "REDIS_TLS_CA",
        "PEM of the CA that signed the Redis (and Sentinel) certificates, with `REDIS_TLS` or a "
        "`rediss://` URL; as `REDIS_TLS_CA_FILE` from a mounted file. Unset = the system CAs.",
    )
    redis_min_replicas: int | None = _env(
        "REDIS_MIN_REPLICAS",
        "A room's state write counts (and its command's events go out) only once this many replicas "
        "acknowledged it (Redis `WAIT`; in a cluster, replicas of the shard that holds the room); until "
        "then the command retries in place. Unset: 1 with `REDIS_SENTINELS` or `REDIS_CLUSTER_NODES`, 0 "
        "with `REDIS_URL`.",
    )
    redis_wait_timeout_seconds: float = _env(
        "REDIS_WAIT_TIMEOUT_SECONDS",
        "Bound on one `WAIT` for replicas; a shorter acknowledgement retries the command's step.",
        default=1.0,
    )
    redis_key_prefix: str = _env(
        "REDIS_KEY_PREFIX",
        "Namespace of every Redis key (no `{` or `}` with `REDIS_CLUSTER_NODES`).",
        default="livekit-signaling",
    )
    dedup_window_seconds: float = _env(
        "DEDUP_WINDOW_SECONDS",
        "A redelivered command (same `message_id`) within this is not run again.",
        default=600.0,
    )
    room_idle_seconds: float = _env(
        "ROOM_IDLE_SECONDS", "State of a room untouched this long is dropped.", default=86400.0
    )
    transient_retry_seconds: float = _env(
        "TRANSIENT_RETRY_SECONDS",
        "How long a command retries in place while the state store is down (its room waits behind it) "
        "before it is requeued.",
        default=30.0,
    )
    shutdown_grace_seconds: float = _env(
        "SHUTDOWN_GRACE_SECONDS",
        "On SIGTERM, in-flight commands get this long to finish (keep below the pod's grace period).",
        default=15.0,
    )
    rebalance_interval_seconds: float = _env(
        "REBALANCE_INTERVAL_SECONDS",
        "How often a replica compares its active partitions with its fair share, and checks that it "
        "still consumes every partition it subscribed to (one without its consumer for a whole interval "
        "is subscribed to again).",
        default=5.0,
    )
    reconcile_interval_seconds: float = _env(
        "RECONCILE_INTERVAL_SECONDS",
        "How often each room with something to enforce (microphone restrictions, screen-share decisions) "
        "is compared with what LiveKit holds and repaired, by the replica holding its partition; a "
        "difference is repaired within two intervals. 0 turns reconciliation off (webhooks only).",
        default=10.0,
    )
    reconcile_disconnect_unknown: bool = _env(
        "RECONCILE_DISCONNECT_UNKNOWN",
        "Reconciliation disconnects a client the room's roster does not know (one left behind after "
        "`leave`, a popout of a participant who left); LiveKit's own participants (egress, ingress, SIP, "
        "agents) are never disconnected. Turn off if anything else mints tokens for these rooms.",
        default=True,
    )
    log_format: str = _env(
        "LOG_FORMAT", "`json`, `text`, or `auto` (text on a terminal, JSON otherwise).", default="auto"
    )
    log_level: str = _env("LOG_LEVEL", "`DEBUG`, `INFO`, `WARNING`, `ERROR`.", default="INFO")
    otel_sdk_disabled: bool = _env(
        "OTEL_SDK_DISABLED",
        "`true` turns tracing off: no spans, and no trace context passed on from commands to their "
        "events and LiveKit calls (docs: operations, tracing).",
        default=False,
    )
    otel_service_name: str = _env(
        "OTEL_SERVICE_NAME", "`service.name` of the spans.", default="livekit-signaling"
    )
    otel_resource_attributes: tuple[tuple[str, str], ...] | None = _env(
        "OTEL_RESOURCE_ATTRIBUTES",
        "More attributes of the spans' resource, `key=value,key=value` (e.g. "
        "`deployment.environment.name=production`); `service.instance.id` is the replica's id.",
    )
    otel_traces_exporter: str | None = _env(
        "OTEL_TRACES_EXPORTER",
        "`otlp` (spans to an OpenTelemetry Collector over OTLP/HTTP), `console` (printed to stdout) or "
        "`none` (propagation only: commands' trace context passed on, nothing recorded). Unset: `otlp` "
        "when an `OTEL_EXPORTER_OTLP_*ENDPOINT` is set, else `none`.",
    )
    otel_exporter_otlp_endpoint: str | None = _env(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "Base URL of the Collector's OTLP/HTTP receiver; spans go to `<it>/v1/traces` (default "
        "`http://localhost:4318`).",
    )
    otel_exporter_otlp_traces_endpoint: str | None = _env(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "Full URL spans are posted to, instead of `OTEL_EXPORTER_OTLP_ENDPOINT` + `/v1/traces`.",
    )
    otel_exporter_otlp_protocol: str = _env(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "`http/protobuf`, the only protocol supported.", default=OTLP_PROTOCOL
    )
    otel_exporter_otlp_traces_protocol: str | None = _env(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "The same, for traces only; `http/protobuf` too."
    )
    otel_exporter_otlp_headers: tuple[tuple[str, str], ...] | None = _env(
        "OTEL_EXPORTER_OTLP_HEADERS",
        "Headers of every export request, `key=value,key=value` (a Collector's API key); never logged. "
        "The exporter also reads OpenTelemetry's other `OTEL_EXPORTER_OTLP_*` variables itself "
        "(timeout, compression, certificates).",
        secret=True,
    )
    otel_traces_sampler: str = _env(
        "OTEL_TRACES_SAMPLER",
        "`parentbased_always_on` (a command is recorded when its controller's trace is), "
        "`parentbased_traceidratio`, `traceidratio`, `always_on`, `always_off`, `parentbased_always_off`.",
        default="parentbased_always_on",
    )
    otel_traces_sampler_arg: float | None = _env(
        "OTEL_TRACES_SAMPLER_ARG", "The ratio of the `*traceidratio` samplers, 0 to 1 (default 1)."
    )
    tracing_spans_per_command: int = _env(
        "TRACING_SPANS_PER_COMMAND",
        "Client spans (LiveKit calls, state-store round trips) one command may record; beyond that its "
        "span counts them and records failed calls as events, so a restriction in a room of 10,000 "
        "stays a few dozen spans.",
        default=32,
    )

    @property
    def amqp_urls(self) -> tuple[str, ...]:
        """The node URLs of ``AMQP_URL``, in the order they are tried."""
        return split_broker_urls(self.amqp_url)

    @property
    def public_url(self) -> str:
        return self.livekit_public_url or self.livekit_url

    @property
    def redis(self) -> RedisTarget | None:
        """Where the shared state lives; None: in process memory (one replica)."""
        return redis_target(
            url=self.redis_url,
            sentinels=self.redis_sentinels or (),
            cluster_nodes=self.redis_cluster_nodes or (),
            sentinel_master=self.redis_sentinel_master,
            username=self.redis_username,
            password=self.redis_password,
            sentinel_username=self.redis_sentinel_username,
            sentinel_password=self.redis_sentinel_password,
            tls=self.redis_tls,
            tls_ca=self.redis_tls_ca,
            min_replicas=self.redis_min_replicas,
        )

    @property
    def tracing(self) -> TracingConfig:
        """The ``OTEL_*`` settings resolved as OpenTelemetry's SDK reads them: a traces endpoint is used as
        it is, a base endpoint gets ``/v1/traces``; the exporter defaults to ``otlp`` only when an
        endpoint is set (OpenTelemetry's default, ``otlp`` to localhost, would fail on every replica
        that has no Collector beside it)."""
        base = (self.otel_exporter_otlp_endpoint or "http://localhost:4318").rstrip("/")
        endpoint = self.otel_exporter_otlp_traces_endpoint or f"{base}/v1/traces"
        configured = self.otel_exporter_otlp_endpoint or self.otel_exporter_otlp_traces_endpoint
        return TracingConfig(
            disabled=self.otel_sdk_disabled,
            service_name=self.otel_service_name,
            resource_attributes=dict(self.otel_resource_attributes or ()),
            exporter=self.otel_traces_exporter or ("otlp" if configured else "none"),
            otlp_endpoint=endpoint,
            otlp_headers=dict(self.otel_exporter_otlp_headers or ()),
            sampler=self.otel_traces_sampler,
            sampler_arg=self.otel_traces_sampler_arg,
            spans_per_command=self.tracing_spans_per_command,
        )

    @property
    def uses_redis(self) -> bool:
        return self.redis is not None

    @property
    def required_replicas(self) -> int:
        redis = self.redis
        return redis.required_replicas if redis is not None else 0

    def __repr__(self) -> str:
        """Secrets masked, so that a logged ``Settings`` leaks nothing."""
        shown = []
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if item.metadata["secret"] and value is not None:
                value = "***"
            shown.append(f"{item.name}={value!r}")
        return f"Settings({', '.join(shown)})"


_PARSERS: dict[str, Callable[[str], Any]] = {
    "amqp_url": _broker_urls,
    "redis_url": _url_with_scheme("redis", "rediss", "unix"),
    "redis_sentinels": _host_ports,
    "redis_cluster_nodes": _host_ports,
    "redis_tls": _bool,
    "redis_tls_ca": _pem_certificates,
    "redis_min_replicas": _non_negative_int,
    "redis_wait_timeout_seconds": _positive_float,
    "livekit_url": _url,
    "livekit_public_url": _url,
    "livekit_service_url": _url,
    "amqp_heartbeat_seconds": _positive_int,
    "amqp_prefetch": _positive_int,
    "amqp_reconnect_seconds": _positive_float,
    "amqp_connect_timeout_seconds": _positive_float,
    "livekit_request_timeout_seconds": _positive_float,
    "livekit_retry_attempts": _positive_int,
    "livekit_max_concurrent_requests": _positive_int,
    "command_deadline_seconds": _positive_float,
    "livekit_room_cache_seconds": float,
    "token_ttl_seconds": _positive_int,
    "screen_share_requires_permission": _bool,
    "partitions": _positive_int,
    "delivery_limit": _positive_int,
    "max_body_bytes": _positive_int,
    "trusted_publishers": _user_names,
    "http_port": int,
    "dedup_window_seconds": _positive_float,
    "room_idle_seconds": _positive_float,
    "shutdown_grace_seconds": _positive_float,
    "transient_retry_seconds": _positive_float,
    "rebalance_interval_seconds": _positive_float,
    "reconcile_interval_seconds": _non_negative_float,
    "reconcile_disconnect_unknown": _bool,
    "log_format": _choice("auto", "json", "text"),
    "log_level": _choice("DEBUG", "INFO", "WARNING", "ERROR"),
    "otel_sdk_disabled": _bool,
    "otel_traces_exporter": _choice(*EXPORTERS),
    "otel_exporter_otlp_endpoint": _url,
    "otel_exporter_otlp_traces_endpoint": _url,
    "otel_exporter_otlp_protocol": _otlp_protocol,
    "otel_exporter_otlp_traces_protocol": _otlp_protocol,
    "otel_exporter_otlp_headers": _key_values,
    "otel_resource_attributes": _key_values,
    "otel_traces_sampler": _choice(*SAMPLERS),
    "otel_traces_sampler_arg": _ratio,
    "tracing_spans_per_command": _non_negative_int,
}


def _raw_value(name: str, environ: Mapping[str, str]) -> str | None:
    """``NAME`` or the content of the file ``NAME_FILE`` names (trailing newline stripped)."""
    file_name = environ.get(f"{name}_FILE")
    if file_name:
        try:
            return Path(file_name).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as error:
            raise SettingsError(f"{name}_FILE: cannot read {file_name}: {error.strerror}") from None
    value = environ.get(name)
    return value if value not in (None, "") else None


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Read every setting; the first missing or invalid one raises ``SettingsError`` naming it."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for item in dataclasses.fields(Settings):
        if item.name in overrides:
            values[item.name] = overrides[item.name]
            continue
        name = item.metadata["env"]
        raw = _raw_value(name, environ)
        if raw is None:
            if item.metadata["required"]:
                raise SettingsError(f"{name} is required (or {name}_FILE)")
            continue
        parser = _PARSERS.get(item.name, str)
        try:
            values[item.name] = parser(raw)
        except ValueError as error:
            shown = "" if item.metadata["secret"] else f" {raw!r}"
            raise SettingsError(f"{name}:{shown} is invalid: {error}") from None
    settings = Settings(**values)
    try:
        check_key_prefix(settings.redis_key_prefix, settings.redis)  # the REDIS_* settings together
    except InvalidRedisTarget as error:
        raise SettingsError(str(error)) from None
    return settings


def settings_table() -> str:
    """The table of settings, generated from the definitions above (the docs' settings page)."""
    rows = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    for item in dataclasses.fields(Settings):
        default = "required" if item.metadata["required"] else item.default
        shown_default = "" if default is None else f"`{default}`" if default != "required" else "required"
        rows.append(f"| `{item.metadata['env']}` | {shown_default} | {item.metadata['doc']} |")
    return "\n".join(rows) + "\n"
