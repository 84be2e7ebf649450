"""A controller's typed async client of the service: ``async with SignalingClient(amqp_url) as client``.

One method per command, each returning the typed answer (the types of ``livekit_signaling.schemas``) or
raising ``CommandError`` with the service's error; the events of a room or a participant as an async
iterator (``client.events``). Guide: ``docs/clients.md``.
"""

from livekit_signaling.client.answers import Answers, ReceivedEvent, Sent
from livekit_signaling.client.client import (
    DEFAULT_TIMEOUT_SECONDS,
    CallOptions,
    SignalingClient,
    UndecodableEvent,
)
from livekit_signaling.client.errors import CommandError, CommandTimeout
from livekit_signaling.client.streams import EventStream, EventStreamOverflow
from livekit_signaling.transport.controller import (
    BrokerUnavailable,
    CommandRejected,
    CommandUnroutable,
    ExchangeNotFound,
    NotPermitted,
)

__all__ = [
    "DEFAULT_TIMEOUT_SECONDS",
    "Answers",
    "BrokerUnavailable",
    "CallOptions",
    "CommandError",
    "CommandRejected",
    "CommandTimeout",
    "CommandUnroutable",
    "EventStream",
    "EventStreamOverflow",
    "ExchangeNotFound",
    "NotPermitted",
    "ReceivedEvent",
    "Sent",
    "SignalingClient",
    "UndecodableEvent",
]
