"""Counters of what crosses the wire between the service and RabbitMQ or Redis, fed by a ``TcpProxy``
observer: AMQP 0-9-1 frames by kind and method, Redis commands and round trips. They count protocol
units (frames, commands, replies), never TCP segments, so the same exchange gives the same counts however
the kernel splits it.

- AMQP: a frame is type (u8), channel (u16), size (u32), payload, 0xCE; a method frame's payload starts
  with its class and method ids (u16 each). Heartbeats are left out: they come with time, not work.
- Redis (RESP): a command is an array of bulk strings from the client; a reply is one RESP value from
  the server. A round trip begins when the client sends a command while none of its earlier commands on
  that connection waits for a reply: a pipeline is one round trip, however many commands it carries.
"""

from __future__ import annotations

import struct
import threading
from collections import Counter
from dataclasses import dataclass, field

from testkit.proxy import TcpProxy

_FRAME_HEADER = struct.Struct(">BHI")
_METHOD = struct.Struct(">HH")
_AMQP_PROTOCOL_HEADER = b"AMQP"
_HEARTBEAT = 8
_FRAME_KINDS = {1: "method", 2: "header", 3: "body"}
#: (class id, method id) of the methods worth a name of their own; the rest count as ``class.method`` ids.
AMQP_METHODS = {
    (60, 40): "basic.publish",
    (60, 60): "basic.deliver",
    (60, 80): "basic.ack",
    (60, 90): "basic.reject",
    (60, 120): "basic.nack",
}


def _method_name(class_id: int, method_id: int) -> str:
    return AMQP_METHODS.get((class_id, method_id), f"{class_id}.{method_id}")


class _Counting:
    """A snapshot-able ``Counter`` written by the proxy's thread and read by the test's."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def _add(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self._counts)


@dataclass
class _AmqpStream:
    buffer: bytearray = field(default_factory=bytearray)
    started: bool = False


class AmqpCounter(_Counting):
    """Counts frames in each direction: ``out.<kind>``/``in.<kind>`` (method, header, body) and
    ``out.<method>``/``in.<method>`` (``out`` is client to broker)."""

    def __init__(self) -> None:
        super().__init__()
        self._streams: dict[tuple[int, bool], _AmqpStream] = {}

    def observe(self, connection: object, to_server: bool, data: bytes) -> None:
        stream = self._streams.setdefault((id(connection), to_server), _AmqpStream())
        stream.buffer += data
        if to_server and not stream.started:
            if len(stream.buffer) < 8:
                return
            if stream.buffer.startswith(_AMQP_PROTOCOL_HEADER):
                del stream.buffer[:8]
            stream.started = True
        side = "out" if to_server else "in"
        while len(stream.buffer) >= _FRAME_HEADER.size:
            kind, _channel, size = _FRAME_HEADER.unpack_from(stream.buffer)
            end = _FRAME_HEADER.size + size + 1
            if len(stream.buffer) < end:
                return
            if kind != _HEARTBEAT:
                self._add(f"{side}.{_FRAME_KINDS.get(kind, str(kind))}")
                if kind == 1:
                    method = _method_name(*_METHOD.unpack_from(stream.buffer, _FRAME_HEADER.size))
                    self._add(f"{side}.{method}")
            del stream.buffer[:end]


class _Incomplete(Exception):
    pass


def _line(buffer: bytes | bytearray, start: int) -> tuple[bytes, int]:
    end = buffer.find(b"\r\n", start)
    if end < 0:
        raise _Incomplete
    return bytes(buffer[start:end]), end + 2


def _resp_value(buffer: bytes | bytearray, start: int) -> tuple[list[bytes] | None, int]:
    """One RESP (2 or 3) value from ``start``: the bulk strings of an array of them (a command), or None
    for anything else; and where the next value starts."""
    if start >= len(buffer):
        raise _Incomplete
    marker = buffer[start : start + 1]
    line, position = _line(buffer, start + 1)
    if marker in (b"$", b"=", b"!"):
        length = int(line)
        if length < 0:
            return None, position
        if len(buffer) < position + length + 2:
            raise _Incomplete
        return [bytes(buffer[position : position + length])], position + length + 2
    if marker in (b"*", b"~", b">", b"%", b"|"):
        count = int(line)
        if marker in (b"%", b"|"):
            count *= 2
        items: list[bytes] = []
        for _ in range(max(count, 0)):
            item, position = _resp_value(buffer, position)
            items += item or []
        return items, position
    return None, position  # + - : _ # , ( simple values


@dataclass
class _RedisConnection:
    commands: bytearray = field(default_factory=bytearray)
    replies: bytearray = field(default_factory=bytearray)
    awaiting: int = 0


class RedisCounter(_Counting):
    """Counts ``commands``, ``round_trips`` and ``command.<NAME>`` of the clients through the proxy."""

    def __init__(self) -> None:
        super().__init__()
        self._connections: dict[int, _RedisConnection] = {}

    def observe(self, connection: object, to_server: bool, data: bytes) -> None:
        state = self._connections.setdefault(id(connection), _RedisConnection())
        buffer = state.commands if to_server else state.replies
        buffer += data
        position = 0
        while True:
            try:
                value, position_after = _resp_value(buffer, position)
            except _Incomplete:
                break
            position = position_after
            if not to_server:
                state.awaiting -= 1
                continue
            if state.awaiting == 0:
                self._add("round_trips")
            state.awaiting += 1
            self._add("commands")
            if value:
                self._add(f"command.{value[0].decode(errors='replace').upper()}")
        del buffer[:position]


class CountingProxy:
    """A forwarding ``TcpProxy`` in front of ``url`` whose traffic ``counter`` counts."""

    def __init__(self, url: str, default_port: int, counter: AmqpCounter | RedisCounter) -> None:
        self.counter = counter
        self._proxy = TcpProxy.for_url(url, default_port)
        self._proxy.observer = counter.observe

    @property
    def url(self) -> str:
        return self._proxy.url

    def __enter__(self) -> CountingProxy:
        self._proxy.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._proxy.stop()
