"""Delete topology that an interrupted bench run left behind: every queue and exchange whose name starts
with ``bench-`` (the bench's own uuid-named prefix), listed with ``rabbitmqctl`` on this machine.

    .venv/bin/python -m bench.cleanup            # lists and deletes
    .venv/bin/python -m bench.cleanup --dry-run  # lists only

Do not run it while a bench run is in progress: that run's topology starts with ``bench-`` too.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys

import aio_pika

from testkit.processes import AMQP_URL

PREFIX = "bench-"


def _list(kind: str) -> list[str]:
    rabbitmqctl = shutil.which("rabbitmqctl")
    if rabbitmqctl is None:
        raise SystemExit("rabbitmqctl not found: delete bench-* queues and exchanges by hand")
    out = subprocess.run(
        [rabbitmqctl, "-q", f"list_{kind}", "name"], capture_output=True, text=True, check=True, timeout=60
    )
    return sorted(line.strip() for line in out.stdout.splitlines() if line.strip().startswith(PREFIX))


async def _delete(queues: list[str], exchanges: list[str]) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        for queue in queues:
            channel = await connection.channel()
            await channel.queue_delete(queue)
        for exchange in exchanges:
            channel = await connection.channel()
            await channel.exchange_delete(exchange)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cleanup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    queues, exchanges = _list("queues"), _list("exchanges")
    print(f"{len(queues)} queues, {len(exchanges)} exchanges named {PREFIX}*")
    for name in (*queues, *exchanges):
        print(f"  {name}")
    if not args.dry_run and (queues or exchanges):
        asyncio.run(_delete(queues, exchanges))
        print("deleted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
