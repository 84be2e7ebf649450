"""The contract proven from another language: ``clients/typescript``'s Node test (``node:test``, amqplib)
drives this suite's service through the TypeScript types generated from ``schemas/*.schema.json`` alone:
a join and its credentials, restrictions enabled by a moderator, a user's moderator command answered with
its error. Its npm packages come from its lock (``scripts/install-node``, which ``scripts/test`` runs)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from testkit.processes import AMQP_URL, Names, ServiceProcess

TYPESCRIPT = Path(__file__).resolve().parents[2] / "clients" / "typescript"


def test_the_typescript_types_drive_the_service(service: ServiceProcess, names: Names) -> None:
    npm = shutil.which("npm")
    assert npm is not None, "Node 20 and npm are needed for the TypeScript contract test"
    assert (TYPESCRIPT / "node_modules").is_dir(), "run bash scripts/install-node first"
    completed = subprocess.run(
        [npm, "test", "--silent"],
        cwd=TYPESCRIPT,
        env={
            **os.environ,
            "AMQP_URL": AMQP_URL,
            "SIGNALING_COMMAND_EXCHANGE": names.command_exchange,
            "SIGNALING_EVENT_EXCHANGE": names.event_exchange,
        },
        capture_output=True,
        timeout=180,
        check=False,
    )
    report = completed.stdout.decode() + completed.stderr.decode()
    assert completed.returncode == 0, report
    # The TAP summary: every test ran and passed (a test file that failed to load runs none).
    assert re.search(r"^# pass 3$", report, re.MULTILINE), report
    assert re.search(r"^# fail 0$", report, re.MULTILINE), report
