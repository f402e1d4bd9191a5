"""The runner's Kafka producer, replaced when the broker lost its idempotence state.

After a long broker outage, an idempotent producer's sequence numbers may no longer match what
the broker remembers: every later send of that producer fails with
``OutOfOrderSequenceNumber`` (or ``UnknownProducerId``, ``ProducerFenced``,
``InvalidProducerIdMapping``) until it is recreated. :class:`ProducerHandle` notices such a
failure on any send and, at the next :meth:`~ProducerHandle.current`, closes that producer
and starts a new one from its factory. What was not acknowledged is sent again by its owner
(the runner re-publishes the replies and dead letters of its batch).

The factory is a seam (:class:`~service_sdk.runner.ServiceRunner` takes one): tests give a
producer that fails the way a broker does, without stopping a broker.

Example::

    producers = ProducerHandle(lambda: AIOKafkaProducer(**kafka.producer_kwargs()))
    delivery = await producers.send("saga.replies", value=b"...", key=b"saga-1")
    await delivery  # raises if not acknowledged; a broken producer is renewed next time
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from service_sdk.transient import needs_new_producer

__all__ = ["Producer", "ProducerFactory", "ProducerHandle"]

logger = logging.getLogger(__name__)


class Producer(Protocol):
    """What the runner needs of a Kafka producer (``aiokafka.AIOKafkaProducer`` has it)."""

    async def start(self) -> None:
        """Connect to Kafka.

        Raises:
            KafkaError: The brokers cannot be reached (yet).
        """

    async def stop(self) -> None:
        """Flush what is pending and close (also after a failed start)."""

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        *,
        headers: Sequence[tuple[str, bytes | None]] | None = None,
    ) -> asyncio.Future[Any]:
        """Queue one record.

        Returns:
            A future resolved when the broker acknowledged the record, or failed when it
            cannot be.

        Raises:
            KafkaError: The record cannot be queued (the producer failed for good, say).
        """
        ...


ProducerFactory = Callable[[], Producer]
"""Makes a new, not yet started producer."""


def _failed(error: BaseException) -> asyncio.Future[Any]:
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_exception(error)
    return future


class ProducerHandle:
    """Holds the current producer; renews it once it lost its idempotence state.

    Args:
        factory: Makes a new, not yet started producer.
        name: Who sends (for the log line of a renewal).

    Attributes:
        renewals: Producers replaced so far.
    """

    def __init__(self, factory: ProducerFactory, *, name: str = "runner") -> None:
        self._factory = factory
        self._name = name
        self._producer: Producer | None = None
        self._broken: Producer | None = None
        self._lock = asyncio.Lock()
        self.renewals = 0

    @property
    def started(self) -> bool:
        """True while a producer is started (a broken one included)."""
        return self._producer is not None

    async def current(self) -> Producer:
        """The producer to send with now: started first when there is none, renewed first
        when a send found it broken.

        Raises:
            Exception: No producer could be started (Kafka unreachable: transient).
        """
        producer = self._producer
        if producer is not None and producer is not self._broken:
            return producer  # the common case, without the lock
        async with self._lock:
            if self._producer is not None and self._producer is self._broken:
                broken, self._producer, self._broken = self._producer, None, None
                self.renewals += 1
                logger.warning(
                    "%s: the producer lost its idempotence state on the broker; renewing it",
                    self._name,
                )
                with contextlib.suppress(Exception):
                    await broken.stop()
            if self._producer is None:
                producer = self._factory()
                try:
                    await producer.start()
                except BaseException:
                    with contextlib.suppress(Exception):
                        await producer.stop()
                    raise
                self._producer = producer
            return self._producer

    async def send(
        self,
        topic: str,
        *,
        value: bytes | None,
        key: bytes | None,
        headers: Sequence[tuple[str, bytes | None]] | None = None,
    ) -> asyncio.Future[Any]:
        """Queue one record on the current producer.

        Never raises but cancellation: a record that cannot even be queued gets a failed
        future, so that every record of a batch is accounted for the same way.

        Returns:
            A future resolved when the record is acknowledged, failed otherwise.
        """
        try:
            producer = await self.current()
        except Exception as exc:
            return _failed(exc)
        try:
            delivery = await producer.send(topic, value=value, key=key, headers=headers)
        except Exception as exc:
            self._check(producer, exc)
            return _failed(exc)
        if delivery.done():
            self._delivered(producer, delivery)
        else:
            # Registered before any awaiter's wake-up: the next sender sees the verdict.
            delivery.add_done_callback(lambda done: self._delivered(producer, done))
        return delivery

    async def send_and_wait(
        self,
        topic: str,
        *,
        value: bytes | None,
        key: bytes | None,
        headers: Sequence[tuple[str, bytes | None]] | None = None,
    ) -> None:
        """Send one record and wait for its acknowledgement.

        Raises:
            Exception: It was not acknowledged.
        """
        await (await self.send(topic, value=value, key=key, headers=headers))

    def _delivered(self, producer: Producer, delivery: asyncio.Future[Any]) -> None:
        if not delivery.cancelled() and (error := delivery.exception()) is not None:
            self._check(producer, error)

    def _check(self, producer: Producer, error: BaseException) -> None:
        # Only the producer in use is marked: a failure of an older one says nothing new.
        if producer is self._producer and needs_new_producer(error):
            self._broken = producer

    async def stop(self) -> None:
        """Stop the producer (pending records are flushed first). Idempotent."""
        async with self._lock:
            producer, self._producer, self._broken = self._producer, None, None
        if producer is not None:
            await producer.stop()
