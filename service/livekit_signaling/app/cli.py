"""The ``livekit-signaling`` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import msgspec

from livekit_signaling.app.settings import Settings, SettingsError, load_settings, settings_table
from livekit_signaling.telemetry.logging import configure_logging
from livekit_signaling.transport.refusals import quiet_amqp_client_logs

if TYPE_CHECKING:
    from livekit_signaling.client import SignalingClient

log = logging.getLogger("livekit_signaling")

#: ``send`` prints every participant's copy of a broadcast, which follow the sender's at once.
SEND_LINGER_SECONDS = 0.3

DEV_API_KEY = "devkey"
# The same well-known development secret `livekit-server --dev` uses; never for production.
DEV_API_SECRET = "secret"  # noqa: S105


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop


async def _run(settings: Settings) -> None:
    from livekit_signaling.app.service import SignalingService

    await SignalingService(settings).run(_stop_event())


async def _dev(port: int, overrides: dict[str, object]) -> None:
    """The service plus a LiveKit emulator on a local port, as ``livekit-server --dev`` would be, and the
    console on the service's HTTP port."""
    from livekit_signaling.app.service import SignalingService
    from livekit_signaling.console import Console
    from livekit_signaling.emulator import LiveKitEmulator

    http_port = int(str(overrides.get("http_port", 8080)))
    emulator = LiveKitEmulator(
        DEV_API_KEY, DEV_API_SECRET, webhook_url=f"http://127.0.0.1:{http_port}/webhook"
    )
    url = await emulator.start("127.0.0.1", port)
    log.info("LiveKit emulator on %s (key %s)", url, DEV_API_KEY)
    try:
        settings = load_settings(
            None, livekit_url=url, livekit_api_key=DEV_API_KEY, livekit_api_secret=DEV_API_SECRET, **overrides
        )
        # The console shows each sent command's trace: spans are recorded and kept even without an
        # exporter (unless OTEL_SDK_DISABLED).
        service = SignalingService(settings, keep_traces=True)
        console = Console(
            load_room=service.store.load,
            amqp_urls=settings.amqp_urls,
            command_exchange=settings.command_exchange,
            event_exchange=settings.event_exchange,
            emulator_url=url,
            policy=service.policy,
            disconnect_unknown=settings.reconcile_disconnect_unknown,
            recent_repairs=service.recent_repairs.of,
            traces=service.tracer.controller_traces(command_exchange=settings.command_exchange),
        )
        service.http.mount(console.install)
        log.info("console: %s", _console_address(settings.http_host, http_port))
        await service.run(_stop_event())
    finally:
        await emulator.stop()


def _console_address(host: str, port: int) -> str:
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


def _free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="livekit-signaling",
        description="LiveKit signaling: commands from RabbitMQ in, LiveKit actions and per-participant "
        "events out. Settings come from the environment (see `livekit-signaling settings`).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="run the service in the foreground until SIGTERM/SIGINT")
    dev = commands.add_parser(
        "dev",
        help="run the service against a built-in LiveKit emulator (dev key/secret) with a console page "
        "at / on the HTTP port; needs only RabbitMQ",
    )
    dev.add_argument("--livekit-port", type=int, default=7880, help="emulator port (default 7880)")
    dev.add_argument(
        "--partitions",
        type=int,
        default=None,
        help="partition queues (default: SIGNALING_PARTITIONS, else 1 so that no plugin is needed)",
    )
    commands.add_parser("settings", help="print the table of settings (environment variables)")
    send = commands.add_parser(
        "send",
        help="publish one command as a controller would and print the events that answer it",
        description="Example: livekit-signaling send --room R --participant P --role moderator "
        '\'{"action": "disable_microphone_restrictions"}\'',
    )
    send.add_argument("--room", required=True)
    send.add_argument("--participant", required=True)
    send.add_argument(
        "--role",
        choices=["moderator", "user", "guest"],
        default="user",
        help="the sender's role (default user, the least privileged; moderator commands need moderator)",
    )
    send.add_argument("--kind", choices=["user", "guest", "sip", "recorder"], default="user")
    send.add_argument("--timeout", type=float, default=3.0, help="seconds to collect answers (default 3)")
    send.add_argument("payload", help='the command payload as JSON, e.g. \'{"action": "join"}\'')
    watch = commands.add_parser("watch", help="print a room's events as they pass, until Ctrl-C")
    watch.add_argument("--room", required=True)
    return parser


def _client_settings() -> Settings:
    """The AMQP and exchange settings of the service; the LiveKit ones are not needed by a client."""
    return load_settings(
        livekit_url=os.environ.get("LIVEKIT_URL") or "http://unused",
        livekit_api_key="unused",
        livekit_api_secret="unused",  # noqa: S106 - the client never talks to LiveKit
    )


def _client(settings: Settings) -> SignalingClient:
    from livekit_signaling.client import SignalingClient

    return SignalingClient(
        settings.amqp_urls,
        command_exchange=settings.command_exchange,
        event_exchange=settings.event_exchange,
        connection_name="livekit-signaling cli",
    )


async def _send(args: argparse.Namespace) -> int:
    from livekit_signaling.client import CommandTimeout
    from livekit_signaling.schemas import codec
    from livekit_signaling.transport.controller import LinkError

    settings = _client_settings()
    try:
        command = codec.decode_command(msgspec.Raw(args.payload.encode()))
        # The envelope is checked as the service checks it, before anything is sent.
        codec.encode_command(args.room, args.participant, command, role=args.role, kind=args.kind)
    except ValueError as error:  # codec.InvalidPayload, codec.MalformedEnvelope
        sys.stderr.write(f"livekit-signaling: not a command the service takes: {error}\n")
        return 2
    try:
        async with _client(settings) as client:
            answers = await client.request(
                args.room,
                args.participant,
                command,
                role=args.role,
                kind=args.kind,
                timeout=args.timeout,
                linger=SEND_LINGER_SECONDS,
            )
    except (LinkError, CommandTimeout) as error:
        sys.stderr.write(f"livekit-signaling: {error}\n")
        return 1
    for received in answers.events:
        sys.stdout.write(f"{received.routing_key} {codec.encode_event(received.event).decode()}\n")
    if not answers.events:
        sys.stderr.write(
            "no answer (leave, close_room and some moderator commands answer nothing; "
            "a moderator command sent without --role moderator answers insufficient_permissions)\n"
        )
    return 0


async def _watch(args: argparse.Namespace) -> int:
    from livekit_signaling.schemas import codec

    settings = _client_settings()
    async with _client(settings) as client, client.events(args.room) as events:
        async for received in events:
            sys.stdout.write(f"{received.routing_key} {codec.encode_event(received.event).decode()}\n")
            sys.stdout.flush()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "settings":
        sys.stdout.write(settings_table())
        return 0
    try:
        if args.command == "send":
            return asyncio.run(_send(args))
        if args.command == "watch":
            with contextlib.suppress(KeyboardInterrupt):
                return asyncio.run(_watch(args))
            return 0
        if args.command == "run":
            settings = load_settings()
            configure_logging(settings.log_format, settings.log_level)
            quiet_amqp_client_logs(settings.log_level)
            asyncio.run(_run(settings))
        elif args.command == "dev":
            # Validate everything but the LiveKit settings, which dev provides itself.
            probe = load_settings(
                livekit_url="http://127.0.0.1", livekit_api_key=DEV_API_KEY, livekit_api_secret=DEV_API_SECRET
            )
            configure_logging(probe.log_format, probe.log_level)
            quiet_amqp_client_logs(probe.log_level)
            overrides: dict[str, object] = {}
            if args.partitions is not None:
                overrides["partitions"] = args.partitions
            elif "SIGNALING_PARTITIONS" not in os.environ:
                # One queue bound directly: dev needs nothing but a stock RabbitMQ.
                overrides["partitions"] = 1
            # The webhook URL and the console's address need the port before the server binds it.
            overrides["http_port"] = probe.http_port or _free_port(probe.http_host)
            if not {"SIGNALING_HTTP_HOST", "SIGNALING_HTTP_HOST_FILE"} & os.environ.keys():
                # The console shows access tokens and sends commands as anyone: this machine only,
                # unless asked otherwise.
                overrides["http_host"] = "127.0.0.1"
            asyncio.run(_dev(args.livekit_port, overrides))
    except SettingsError as error:
        sys.stderr.write(f"livekit-signaling: invalid setting: {error}\n")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
