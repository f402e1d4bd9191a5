"""The coordinator's Kafka producer, replaced when the broker lost its idempotence state.

After a long broker outage, the idempotent producer's sequence numbers may no longer match
what the broker remembers: every send then fails with ``OutOfOrderSequenceNumber`` or
``UnknownProducerId`` until the producer is recreated. :meth:`ProducerHandle.renew` does that,
once per broken producer however many senders notice; what was not acknowledged is sent again
by its owner (outbox rows stay unsent, dead letters are published again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka import AIOKafkaProducer

from coordinator.config import KafkaSettings
from coordinator.runtime.kafka import start_producer

__all__ = ["ProducerHandle"]

logger = logging.getLogger(__name__)


class ProducerHandle:
    """Holds the current producer; senders fetch :attr:`producer` for every batch."""

    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        self.renewals = 0

    async def start(self) -> None:
        """Start the first producer.

        Raises:
            KafkaError: Kafka cannot be reached (yet).
        """
        await self.current()

    async def current(self) -> AIOKafkaProducer:
        """The producer to send with now, started first if a renewal could not start one.

        Raises:
            KafkaError: No producer could be started; transient, the caller retries.
        """
        async with self._lock:
            if self._producer is None:
                self._producer = await start_producer(self._settings)
            return self._producer

    async def renew(self, broken: AIOKafkaProducer) -> None:
        """Drop ``broken`` (a no-op if that happened already); :meth:`current` starts anew."""
        async with self._lock:
            if id(self._producer) != id(broken):
                return  # another sender renewed it first
            logger.warning("the producer lost its idempotence state on the broker; renewing it")
            self._producer = None
            self.renewals += 1
            with contextlib.suppress(Exception):
                await broken.stop()
            # Started again by the next current(); if Kafka is down, that call fails, retried.

    async def stop(self) -> None:
        """Stop the producer. Idempotent."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()
