"""Run the LiveKit emulator as a process: ``python -m livekit_signaling.emulator --port 0 --api-secret ...``.

Once bound it prints exactly one line, ``LISTENING <url>``, to stdout so a parent process can read the
port it got; logs go to stderr. SIGTERM or SIGINT stop it cleanly with exit status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from .server import LiveKitEmulator

log = logging.getLogger(__name__)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m livekit_signaling.emulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--api-key", default="devkey")
    parser.add_argument("--api-secret", required=True)
    parser.add_argument("--webhook-url", default=None)
    parser.add_argument(
        "--unknown-participant-mute-delay",
        type=float,
        default=15.0,
        help="seconds MutePublishedTrack waits for an unknown participant before deadline_exceeded",
    )
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    emulator = LiveKitEmulator(
        args.api_key,
        args.api_secret,
        webhook_url=args.webhook_url,
        unknown_participant_mute_delay=args.unknown_participant_mute_delay,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    url = await emulator.start(args.host, args.port)
    try:
        print(f"LISTENING {url}", flush=True)
        await stop.wait()
        log.info("signal received, stopping")
    finally:
        await emulator.stop()


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
