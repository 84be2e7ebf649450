"""The baseline: a bare aio-pika service with the signaling service's topology and delivery guarantees,
and nothing else (no LiveKit calls, no tokens, no state, no per-room ordering).

Run as its own process, configured by the same environment variables as the service::

    python -m bench.baseline        # prints "READY" on stdout once it consumes

Topology, as the service's ``transport/amqp.py`` declares it: the command topic exchange, with more than one
partition a consistent-hash exchange ``<queue>.partitions`` bound with ``room.*`` and ``<queue>.<n>``
quorum queues (single active consumer, delivery limit, dead-lettering) bound with weight ``"1"``; with one
partition the queue is bound to the command exchange directly. One consuming channel with
``prefetch_count=AMQP_PREFETCH`` per consumer, one publishing channel with publisher confirms and
``mandatory``. Per command: decode the JSON envelope, publish one persistent event to
``room.<room>.participant.<participant>`` (or ``bench_fanout.count`` events, for the fan-out workloads),
wait for the confirms, then ack.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage, ExchangeType

from livekit_signaling.schemas.routing import EVERY_ROOM_COMMAND, participant_routing_key


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


class Baseline:
    def __init__(self) -> None:
        self.url = _env("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
        self.command_exchange = _env("SIGNALING_COMMAND_EXCHANGE", "livekit.commands")
        self.event_exchange_name = _env("SIGNALING_EVENT_EXCHANGE", "livekit.events")
        self.queue = _env("SIGNALING_QUEUE", "livekit-signaling")
        self.partitions = int(_env("SIGNALING_PARTITIONS", "16"))
        self.dead_letter = _env("SIGNALING_DEAD_LETTER_EXCHANGE", "livekit-signaling.dead-letter")
        self.delivery_limit = int(_env("SIGNALING_DELIVERY_LIMIT", "5"))
        self.prefetch = int(_env("AMQP_PREFETCH", "32"))
        self._events: AbstractExchange | None = None

    async def run(self, stop: asyncio.Event) -> None:
        connection = await aio_pika.connect_robust(
            self.url, client_properties={"connection_name": f"bench-baseline:{os.getpid()}"}
        )
        async with connection:
            consume = await connection.channel(publisher_confirms=True)
            await consume.set_qos(prefetch_count=self.prefetch)
            publish = await connection.channel(publisher_confirms=True, on_return_raises=True)
            commands = await consume.declare_exchange(self.command_exchange, ExchangeType.TOPIC, durable=True)
            self._events = await publish.declare_exchange(
                self.event_exchange_name, ExchangeType.TOPIC, durable=True
            )
            await publish.declare_exchange(self.dead_letter, ExchangeType.FANOUT, durable=True)
            dead_letters = await consume.declare_queue(
                self.dead_letter, durable=True, arguments={"x-queue-type": "quorum"}
            )
            await dead_letters.bind(self.dead_letter)
            source: AbstractExchange = commands
            if self.partitions > 1:
                source = await consume.declare_exchange(
                    f"{self.queue}.partitions", "x-consistent-hash", durable=True
                )
                await source.bind(commands, routing_key=EVERY_ROOM_COMMAND)
            for partition in range(self.partitions):
                queue = await consume.declare_queue(
                    self.queue if self.partitions == 1 else f"{self.queue}.{partition}",
                    durable=True,
                    arguments={
                        "x-queue-type": "quorum",
                        "x-single-active-consumer": True,
                        "x-delivery-limit": self.delivery_limit,
                        "x-dead-letter-exchange": self.dead_letter,
                    },
                )
                await queue.bind(source, routing_key="1" if self.partitions > 1 else EVERY_ROOM_COMMAND)
                await queue.consume(self.on_message)
            print("READY", flush=True)
            await stop.wait()

    async def _publish(self, body: bytes, routing_key: str, correlation_id: str | None, kind: str) -> None:
        assert self._events is not None
        message = aio_pika.Message(
            body,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            correlation_id=correlation_id,
            type=kind,
            message_id=uuid.uuid4().hex,
        )
        await self._events.publish(message, routing_key, mandatory=True)

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            envelope: dict[str, Any] = json.loads(message.body)
            room = str(envelope["room"])
            kind = str(envelope["payload"]["action"])
            fanout = envelope.get("bench_fanout")
            if fanout:
                # One command, many recipients (W4/W5): all confirms awaited together, as the service does.
                prefix, count = str(fanout["prefix"]), int(fanout["count"])
                recipients = [f"{prefix}{i}" for i in range(count)]
            else:
                recipients = [str(envelope["participant"])]
            await asyncio.gather(
                *(
                    self._publish(
                        json.dumps({"room": room, "participant": who, "payload": {"message": kind}}).encode(),
                        participant_routing_key(room, who),
                        message.message_id,
                        kind,
                    )
                    for who in recipients
                )
            )
        except (aiormq.exceptions.AMQPError, ConnectionError):
            await message.nack(requeue=True)
            return
        except (ValueError, KeyError, TypeError):
            await message.reject(requeue=False)  # dead-lettered by the queue
            return
        await message.ack()


def main() -> int:
    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Baseline().run(stop)

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
