"""No AMQP operation of the service outlives its channel (``transport.amqp.until_closed``): a publish or
an ack that would wait for ever in aiormq once its connection is gone ends with ``ChannelLost`` when the
channel closes, and the command goes on from there (publishes again, or leaves the delivery to the
broker)."""

from __future__ import annotations

import asyncio

import aiormq.base
import pytest

from livekit_signaling.pipeline.ports import ChannelLost
from livekit_signaling.transport.amqp import until_closed


class Channel(aiormq.base.Base):
    """What ``until_closed`` reads of an aiormq channel: ``is_closed`` and ``closing``, aiormq's own."""

    async def _on_close(self, exc: BaseException | None = None) -> None:
        return None

    def __str__(self) -> str:
        return "test channel"


async def test_an_operation_that_waits_for_ever_ends_when_its_channel_closes() -> None:
    channel = Channel(loop=asyncio.get_running_loop())
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def stuck() -> None:  # a write waiting for room in a dead connection's queue
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    waiting = asyncio.create_task(until_closed(channel, stuck()))
    await started.wait()
    await channel.close()
    with pytest.raises(ChannelLost):
        await asyncio.wait_for(waiting, 1.0)
    assert cancelled.is_set(), "the operation was left running"


async def test_an_operation_that_finishes_first_returns_its_result_and_leaves_the_channel_be() -> None:
    channel = Channel(loop=asyncio.get_running_loop())

    async def confirmed() -> str:
        await asyncio.sleep(0)
        return "ack"

    assert await until_closed(channel, confirmed()) == "ack"
    assert not channel.is_closed


async def test_an_operation_on_a_closed_channel_does_not_start() -> None:
    channel = Channel(loop=asyncio.get_running_loop())
    await channel.close()
    ran = False

    async def publish() -> None:
        nonlocal ran
        ran = True

    with pytest.raises(ChannelLost):
        await until_closed(channel, publish())
    assert not ran


async def test_an_error_of_the_operation_is_its_own() -> None:
    channel = Channel(loop=asyncio.get_running_loop())

    async def nacked() -> None:
        raise aiormq.exceptions.DeliveryError(None, None)

    with pytest.raises(aiormq.exceptions.DeliveryError):
        await until_closed(channel, nacked())
