"""Sampling profiles of the service process with py-spy, and a summary of them.

``python -m bench.run --profile`` attaches ``py-spy record --format raw`` to the service during W1 and
W4; the collapsed stacks land in ``bench/results/profile-<name>.txt`` and their summary (functions by
own and by inclusive share of the samples, and by package) in ``profile-<name>-summary.txt``.
``python -m bench.profile FILE`` prints the summary of an existing file.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

from bench.harness import LOGS, RESULTS

_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^:()]+)(?::\d+)?\)$")


class Profiler:
    """Attaches py-spy to a pid between ``start`` and ``stop``."""

    def __init__(self, *, rate: int = 200) -> None:
        executable = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(executable).exists():
            raise RuntimeError("py-spy is not installed (pip install py-spy)")
        self._executable = executable
        self._rate = rate
        self._process: subprocess.Popen[bytes] | None = None
        self._name = ""
        self._output = Path()
        self._append_to: Path | None = None
        self.outputs: dict[str, Path] = {}

    def start(self, pid: int, name: str, *, append: bool = False) -> None:
        """Record ``pid`` into ``profile-<name>.txt``; with ``append``, add to what that file holds (the
        same workload's rounds profiled one by one)."""
        self.stop()
        RESULTS.mkdir(parents=True, exist_ok=True)
        LOGS.mkdir(parents=True, exist_ok=True)
        self._append_to = RESULTS / f"profile-{name}.txt" if append else None
        output = RESULTS / f"profile-{name}{'.part' if append else ''}.txt"
        with (LOGS / f"py-spy-{name}.log").open("wb") as log:
            self._process = subprocess.Popen(
                [
                    *(self._executable, "record", "--pid", str(pid), "--rate", str(self._rate)),
                    *("--format", "raw", "--output", str(output)),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._name = name
        self._output = output
        if not append:
            self.outputs[name] = output

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        output = self._output
        if self._append_to is not None and output.exists():
            with self._append_to.open("a") as whole:
                whole.write(output.read_text())
            output.unlink()
            output = self._append_to
        if output.exists():
            summary = summarize(output)
            output.with_name(f"{output.stem}-summary.txt").write_text(summary)


def _parse(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def _package(frame: str) -> str:
    match = _FRAME.match(frame)
    file = match.group("file") if match else frame
    if "site-packages/" in file:
        return file.split("site-packages/", 1)[1].split("/", 1)[0]
    if file.startswith("service/") or "/service/" in file:
        return "service/" + file.rsplit("service/", 1)[1].split("/", 1)[0]
    if "python3" in file or file.startswith("<"):
        return "stdlib:" + file.rsplit("/", 1)[-1]
    return file


def _short(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    file = match.group("file")
    for marker in ("site-packages/", "/lib/python3.11/", "/work/main/"):
        if marker in file:
            file = file.split(marker, 1)[1]
    return f"{match.group('function')} ({file})"


#: Service-level buckets: a sample goes to the first bucket with a frame on its stack containing one of
#: the patterns (so order matters: the admin token is part of a LiveKit call, a LiveKit call part of a
#: command).
BUCKETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("LiveKit admin JWT per API call (livekit-api _auth_header)", ("Service._auth_header",)),
    (
        "LiveKit API calls (livekit-api, aiohttp, protobuf)",
        ("LiveKitAdapter.", "aiohttp/", "api/room_service"),
    ),
    ("participant token minting (JWT)", ("TokenMinter.", "AccessToken.to_jwt", "jwt/")),
    (
        "event publishing (aio-pika publish + confirm)",
        ("publish_event", "Exchange.publish", "dead_letter (service"),
    ),
    ("acks", ("AmqpTransport.ack", "AmqpTransport._settle", "IncomingMessage.ack")),
    ("AMQP frame writing (aiormq writer)", ("Connection.__writer",)),
    (
        "AMQP frame reading (aiormq reader, channel dispatch)",
        ("Connection.__reader", "Channel._reader", "FrameReceiver"),
    ),
    (
        "delivery hand-over (aio-pika consumer, on_delivery)",
        ("aio_pika/queue.py", "on_message", "on_delivery"),
    ),
    ("state store", ("service/livekit_signaling/store/",)),
    ("Prometheus metrics", ("prometheus_client/",)),
    ("logging", ("logging/", "service/livekit_signaling/telemetry/logging.py")),
    ("command decoding", ("schemas/codec.py",)),
    (
        "handler and processor (rest)",
        (
            "service/livekit_signaling/domain/",
            "service/livekit_signaling/pipeline/processor.py",
            "ordering.py",
        ),
    ),
)


def buckets(stacks: list[tuple[list[str], int]]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for frames, count in stacks:
        joined = ";".join(frames)
        for name, patterns in BUCKETS:
            if any(p in joined for p in patterns):
                counts[name] += count
                break
        else:
            counts["event loop and everything else"] += count
    return counts


#: Who a sample's CPU belongs to: the innermost frame whose module (the first part of the path py-spy
#: shows, with or without ``site-packages/``) is one of these; standard-library frames (asyncio, uuid,
#: contextlib, ...) count as whoever called them, and a sample with none of these (the event loop's own
#: polling and scheduling) as the event loop.
OWNERS: dict[str, tuple[str, ...]] = {
    "our code (livekit_signaling)": ("livekit_signaling",),
    "livekit-api's per-call path (livekit-api, aiohttp, protobuf, yarl, multidict)": (
        "livekit", "api", "protobuf", "google", "aiohttp", "yarl", "multidict", "aiosignal",
        "aiohappyeyeballs", "propcache", "frozenlist",
    ),
    "aiormq publishing and confirms (aiormq, pamqp, aio-pika)": ("aiormq", "pamqp", "aio_pika"),
    "metrics, tracing, msgspec": ("prometheus_client", "opentelemetry", "msgspec"),
}  # fmt: skip
_OWNER_OF = {module: owner for owner, modules in OWNERS.items() for module in modules}


def _module(frame: str) -> str:
    match = _FRAME.match(frame)
    file = match.group("file") if match else frame
    if "site-packages/" in file:
        file = file.split("site-packages/", 1)[1]
    if "/service/" in file:
        file = file.rsplit("/service/", 1)[1]
    return file.split("/", 1)[0]


def owners(stacks: list[tuple[list[str], int]]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for frames, count in stacks:
        code = [f for f in frames if _FRAME.match(f)]
        owner = next((o for f in reversed(code) if (o := _OWNER_OF.get(_module(f)))), None)
        counts[owner or "the event loop itself (no library frame on the stack)"] += count
    return counts


def summarize(path: Path, *, top: int = 40) -> str:
    """Own time (leaf frame), inclusive time (anywhere on the stack) and own time by package."""
    stacks = _parse(path)
    total = sum(count for _, count in stacks) or 1
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    for frames, count in stacks:
        # py-spy's raw stacks start with the process and thread; real frames have "(file:line)".
        code = [f for f in frames if _FRAME.match(f)]
        if not code:
            continue
        own[_short(code[-1])] += count
        packages[_package(code[-1])] += count
        for name in {_short(f) for f in code}:
            inclusive[name] += count

    def table(title: str, counter: Counter[str]) -> list[str]:
        rows = [f"{title}:"]
        rows += [f"  {100 * n / total:5.1f}%  {name}" for name, n in counter.most_common(top)]
        return rows

    lines = [f"{path.name}: {total} samples (CPU-busy only; idle waits are not sampled)"]
    lines += table("where the time goes (first matching bucket per sample)", buckets(stacks))
    lines += table("whose code (innermost non-stdlib frame of each sample)", owners(stacks))
    lines += table("own time by package", packages)
    lines += table("own time by function", own)
    # Frames on (nearly) every stack (the event loop, main) say nothing.
    inclusive = Counter({name: n for name, n in inclusive.items() if n < 0.98 * total})
    lines += table("inclusive time by function (frames on every stack left out)", inclusive)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    for argument in sys.argv[1:]:
        print(summarize(Path(argument)))
