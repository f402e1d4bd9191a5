"""The runner's producer is renewed once the broker lost its idempotence state (no I/O: fake
producers that fail the way aiokafka's does)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from aiokafka.errors import (
    InvalidProducerIdMapping,
    KafkaConnectionError,
    KafkaTimeoutError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    UnknownProducerId,
)

from service_sdk.producer import ProducerHandle


class FakeProducer:
    """Acknowledges every record, or fails them: in the future (``failing``) or when queueing
    (``dead``: aiokafka's send raises once its sender task died)."""

    def __init__(self, name: str, *, failing: BaseException | None = None) -> None:
        self.name = name
        self.failing = failing
        self.dead: BaseException | None = None
        self.start_error: BaseException | None = None
        self.started = self.stopped = False
        self.acknowledged: list[tuple[str, bytes | None]] = []

    async def start(self) -> None:
        if self.start_error is not None:
            raise self.start_error
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        *,
        headers: Sequence[tuple[str, bytes | None]] | None = None,
    ) -> asyncio.Future[Any]:
        if self.dead is not None:
            raise self.dead
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.failing is not None:
            future.set_exception(self.failing)
        else:
            self.acknowledged.append((topic, value))
            future.set_result((topic, 0))
        return future


class Factory:
    def __init__(self, *producers: FakeProducer) -> None:
        self.queue = list(producers)
        self.made: list[FakeProducer] = []

    def __call__(self) -> FakeProducer:
        producer = self.queue.pop(0) if self.queue else FakeProducer(f"p{len(self.made) + 1}")
        self.made.append(producer)
        return producer


@pytest.mark.parametrize(
    "error",
    [OutOfOrderSequenceNumber(), UnknownProducerId(), ProducerFenced(), InvalidProducerIdMapping()],
    ids=lambda error: type(error).__name__,
)
async def test_a_producer_that_lost_its_state_is_closed_and_replaced(error: Exception) -> None:
    broken = FakeProducer("p1", failing=error)
    factory = Factory(broken)
    handle = ProducerHandle(factory)

    delivery = await handle.send("replies", value=b"r1", key=b"s1")
    with pytest.raises(type(error)):
        await delivery
    assert not broken.stopped  # renewed by the next sender, not inside a callback

    await handle.send_and_wait("replies", value=b"r1", key=b"s1")  # published again
    assert broken.stopped
    assert handle.renewals == 1
    assert [p.name for p in factory.made] == ["p1", "p2"]
    assert factory.made[1].acknowledged == [("replies", b"r1")]


async def test_a_producer_whose_sends_raise_is_replaced_too() -> None:
    broken = FakeProducer("p1")
    factory = Factory(broken)
    handle = ProducerHandle(factory)
    await handle.send_and_wait("replies", value=b"r0", key=None)
    broken.dead = OutOfOrderSequenceNumber()
    delivery = await handle.send("replies", value=b"r1", key=None)  # never raises
    with pytest.raises(OutOfOrderSequenceNumber):
        await delivery
    await handle.send_and_wait("replies", value=b"r1", key=None)
    assert (broken.stopped, handle.renewals) == (True, 1)
    assert factory.made[1].acknowledged == [("replies", b"r1")]


@pytest.mark.parametrize(
    "error",
    [KafkaConnectionError("no broker"), KafkaTimeoutError()],
    ids=["unreachable", "timeout"],
)
async def test_a_producer_that_only_could_not_reach_the_broker_is_kept(error: Exception) -> None:
    producer = FakeProducer("p1", failing=error)
    handle = ProducerHandle(Factory(producer))
    with pytest.raises(type(error)):
        await handle.send_and_wait("replies", value=b"r1", key=None)
    producer.failing = None
    await handle.send_and_wait("replies", value=b"r1", key=None)
    assert (producer.stopped, handle.renewals) == (False, 0)


async def test_failures_of_a_replaced_producer_do_not_replace_the_new_one() -> None:
    broken = FakeProducer("p1")
    factory = Factory(broken)
    handle = ProducerHandle(factory)
    await handle.send_and_wait("replies", value=b"r0", key=None)
    broken.failing = OutOfOrderSequenceNumber()
    late = [await handle.send("replies", value=b"r", key=None) for _ in range(3)]
    await asyncio.gather(*late, return_exceptions=True)
    await handle.send_and_wait("replies", value=b"r1", key=None)
    # Three failures of one producer, one renewal.
    assert handle.renewals == 1
    assert len(factory.made) == 2


async def test_a_producer_that_cannot_start_gives_failed_deliveries_and_is_tried_again() -> None:
    first = FakeProducer("p1")
    first.start_error = KafkaConnectionError("no broker")
    factory = Factory(first)
    handle = ProducerHandle(factory)
    delivery = await handle.send("replies", value=b"r1", key=None)
    with pytest.raises(KafkaConnectionError):
        await delivery
    assert first.stopped  # closed after its failed start
    assert not handle.started
    await handle.send_and_wait("replies", value=b"r1", key=None)
    assert handle.started
    assert factory.made[1].acknowledged == [("replies", b"r1")]
    await handle.stop()
    await handle.stop()
    assert factory.made[1].stopped
