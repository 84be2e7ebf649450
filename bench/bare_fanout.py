"""W8's own limit: the transport work of a restriction in a large room, with no service in between.

Run as its own process (as the service is, so that it competes for the same two cores), driven by the
bench through stdin/stdout::

    python -m bench.bare_fanout     # prints "READY" once connected; then one JSON job per line

A job ``{"room": R, "enable": true, "prefix": P, "count": N, "correlation_id": C, "type": T}`` does,
at once, one ``UpdateParticipant`` per participant of ``R`` in the LiveKit emulator and one confirmed
publish per participant ``<P><i>`` (``i < N``: the roster) to its routing key on the event exchange, and
answers ``DONE <seconds>``; ``{"prepare": R}`` signs the room's token and warms the HTTP connections
(answer ``READY``).

What is the same as the service's fan-out (``livekit/adapter.py``, ``transport/amqp.py``):

- LiveKit: one ``ListParticipants`` first (the service needs the connected participants and their
  current permissions to build the updates), then the ``UpdateParticipant`` calls by
  ``LIVEKIT_MAX_CONCURRENT_REQUESTS`` workers (default 64, the service's default) pulling from one
  iterator, over one keep-alive aiohttp session (``TCPConnector(limit=0, keepalive_timeout=30)``) with
  one pre-signed ``roomAdmin`` token for the room, each request the permission the participant had with
  its publish sources replaced, as protobuf over Twirp.
- AMQP: one connection, one channel with publisher confirms; every event a task of its own doing
  aiormq's ``basic_publish`` (persistent, ``mandatory``, its own message id, the command's correlation
  id, ``wait=False``), all confirms gathered.

What differs, on purpose: no livekit-api client per call (the URL is called directly), no retries, no
metrics, logging, state, ordering or tracing; and the two fan-outs run at the same time, whereas the
service publishes the events once LiveKit has applied the restriction (participants are told only of
what LiveKit applied). So this is a lower bound: the service cannot beat it. A job with
``"sequential": true`` keeps the service's order (events after the updates): what the transport costs
with the contract's order.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

import aiohttp
import aiormq
from aiormq import spec
from livekit.api import AccessToken, VideoGrants
from livekit.protocol.models import ParticipantPermission, TrackSource
from livekit.protocol.room import (
    ListParticipantsRequest,
    ListParticipantsResponse,
    UpdateParticipantRequest,
)

from bench.harness import LOGS
from livekit_signaling.schemas.routing import participant_routing_key
from testkit.processes import AMQP_URL, API_KEY, API_SECRET, stop_process

_PERSISTENT = 2
_TWIRP = "/twirp/livekit.RoomService/"
#: What a participant may publish while restricted, and once the restriction is lifted.
_RESTRICTED = [TrackSource.CAMERA]
_FREE = [TrackSource.CAMERA, TrackSource.MICROPHONE]


class BareFanout:
    def __init__(self) -> None:
        self.amqp_url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
        self.exchange = os.environ["SIGNALING_EVENT_EXCHANGE"]
        self.livekit_url = os.environ["LIVEKIT_URL"].rstrip("/")
        self.api_key = os.environ["LIVEKIT_API_KEY"]
        self.api_secret = os.environ["LIVEKIT_API_SECRET"]
        self.workers = int(os.environ.get("LIVEKIT_MAX_CONCURRENT_REQUESTS", "64"))
        self.tokens: dict[str, str] = {}
        self.session: aiohttp.ClientSession | None = None
        self.channel: aiormq.Channel | None = None
        self.sequence = 0

    async def _twirp(self, room: str, method: str, request: Any) -> bytes:
        assert self.session is not None
        headers = {"Authorization": f"Bearer {self.tokens[room]}", "Content-Type": "application/protobuf"}
        url = f"{self.livekit_url}{_TWIRP}{method}"
        async with self.session.post(url, data=request.SerializeToString(), headers=headers) as response:
            body = await response.read()
            if response.status != 200:
                raise RuntimeError(f"{method}: HTTP {response.status}")
            return body

    async def prepare(self, room: str) -> None:
        self.tokens[room] = (
            AccessToken(self.api_key, self.api_secret)
            .with_grants(VideoGrants(room_admin=True, room=room))
            .to_jwt()
        )
        # A few calls at once, so that the pool holds warm connections before anything is timed.
        await asyncio.gather(
            *(self._twirp(room, "ListParticipants", ListParticipantsRequest(room=room)) for _ in range(8))
        )

    async def _livekit(self, room: str, enable: bool) -> None:
        listed = ListParticipantsResponse.FromString(
            await self._twirp(room, "ListParticipants", ListParticipantsRequest(room=room))
        )
        sources = _RESTRICTED if enable else _FREE
        pending = iter(listed.participants)

        async def worker() -> None:
            for participant in pending:
                permission = ParticipantPermission()
                permission.CopyFrom(participant.permission)
                permission.can_publish = True
                del permission.can_publish_sources[:]
                permission.can_publish_sources.extend(sources)
                request = UpdateParticipantRequest(
                    room=room, identity=participant.identity, permission=permission
                )
                await self._twirp(room, "UpdateParticipant", request)

        await asyncio.gather(*(worker() for _ in range(min(self.workers, len(listed.participants)))))

    async def _publish(self, body: bytes, routing_key: str, correlation_id: str, kind: str) -> None:
        assert self.channel is not None
        self.sequence += 1
        await self.channel.basic_publish(
            body,
            exchange=self.exchange,
            routing_key=routing_key,
            properties=spec.Basic.Properties(
                content_type="application/json",
                delivery_mode=_PERSISTENT,
                correlation_id=correlation_id,
                message_type=kind,
                message_id=f"{correlation_id}:{self.sequence}",
            ),
            mandatory=True,
            wait=False,
        )

    async def _events(self, room: str, identities: list[str], correlation_id: str, kind: str) -> None:
        publishes = []
        for identity in identities:
            payload: dict[str, Any] = {"type": kind}
            if kind == "microphone_restrictions_enabled":
                payload["unrestricted_participants"] = []
            body = json.dumps({"room": room, "participant": identity, "payload": payload}).encode()
            publishes.append(
                asyncio.ensure_future(
                    self._publish(body, participant_routing_key(room, identity), correlation_id, kind)
                )
            )
        await asyncio.gather(*publishes)

    async def job(self, job: dict[str, Any]) -> float:
        """One fan-out; with ``"sequential": true`` the events only once LiveKit applied every update (the
        service's order), otherwise both at once."""
        started = time.perf_counter()
        room = str(job["room"])
        livekit = self._livekit(room, bool(job["enable"]))
        identities = [f"{job['prefix']}{i}" for i in range(int(job["count"]))]
        events = self._events(room, identities, str(job["correlation_id"]), str(job["type"]))
        if job.get("sequential"):
            await livekit
            await events
        else:
            await asyncio.gather(livekit, events)
        return time.perf_counter() - started

    async def serve(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
        connection = await aiormq.connect(self.amqp_url)
        async with aiohttp.ClientSession(connector=connector) as self.session:
            self.channel = await connection.channel(publisher_confirms=True)
            await self.channel.exchange_declare(self.exchange, exchange_type="topic", durable=True)
            print("READY", flush=True)
            loop = asyncio.get_running_loop()
            while line := await loop.run_in_executor(None, sys.stdin.readline):
                job = json.loads(line)
                if "prepare" in job:
                    await self.prepare(str(job["prepare"]))
                    print("READY", flush=True)
                else:
                    print(f"DONE {await self.job(job):.6f}", flush=True)
        await connection.close()


def main() -> int:
    asyncio.run(BareFanout().serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())


class BareFanoutProcess:
    """``python -m bench.bare_fanout`` on the given event exchange, driven from the bench process."""

    def __init__(self, livekit_url: str, event_exchange: str) -> None:
        LOGS.mkdir(parents=True, exist_ok=True)
        self.log_path = LOGS / f"bare-fanout-{event_exchange}.log"
        env = {
            **os.environ,
            "AMQP_URL": AMQP_URL,
            "SIGNALING_EVENT_EXCHANGE": event_exchange,
            "LIVEKIT_URL": livekit_url,
            "LIVEKIT_API_KEY": API_KEY,
            "LIVEKIT_API_SECRET": API_SECRET,
        }
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "bench.bare_fanout"],
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        self._expect("READY")

    @property
    def pid(self) -> int:
        return self._process.pid

    def _send(self, job: dict[str, Any]) -> None:
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps(job).encode() + b"\n")
        self._process.stdin.flush()

    def _expect(self, word: str) -> str:
        assert self._process.stdout is not None
        line = self._process.stdout.readline().decode().strip()
        if not line.startswith(word):
            self.stop()
            raise RuntimeError(f"bare fan-out loop answered {line!r}; see {self.log_path}")
        return line

    async def prepare(self, room: str) -> None:
        """The room's token signed and the HTTP connections warm, before anything is timed."""
        self._send({"prepare": room})
        await asyncio.to_thread(self._expect, "READY")

    def start(
        self,
        room: str,
        *,
        enable: bool,
        prefix: str,
        count: int,
        correlation_id: str,
        sequential: bool = False,
    ) -> None:
        """Start one fan-out (the events of a restriction enabled or disabled; with ``sequential``, the
        events after LiveKit's updates); ``finished`` waits for it."""
        kind = "microphone_restrictions_enabled" if enable else "microphone_restrictions_disabled"
        job = {"room": room, "enable": enable, "prefix": prefix, "count": count, "sequential": sequential}
        self._send(job | {"correlation_id": correlation_id, "type": kind})

    async def finished(self) -> float:
        """Seconds the loop itself took for the last fan-out started."""
        return float((await asyncio.to_thread(self._expect, "DONE")).split()[1])

    def stop(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        stop_process(self._process)
