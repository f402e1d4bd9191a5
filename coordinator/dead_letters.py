"""Publishes messages the coordinator cannot process to the dead-letter topic of their topic."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from service_sdk import Topics, dead_letter_headers, decode_headers, encode_headers

__all__ = ["DeadLetter", "DeadLetterPublisher"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeadLetter:
    """A consumed record that goes to a dead-letter topic, and why."""

    record: ConsumerRecord[bytes, bytes]
    reason: str
    error: BaseException


class DeadLetterPublisher:
    """Sends dead letters with headers saying why and where from; waits for the broker's ack."""

    def __init__(self, producer: AIOKafkaProducer, group_id: str) -> None:
        self._producer = producer
        self._group_id = group_id

    async def publish(self, letters: Sequence[DeadLetter]) -> None:
        """Publish every letter to ``<original topic>.dlq``; returns once all are acked."""
        sends = []
        for letter in letters:
            record = letter.record
            headers = dead_letter_headers(
                decode_headers(record.headers),
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                timestamp=record.timestamp,
                group=self._group_id,
                exc=letter.error,
                reason=letter.reason,
            )
            logger.warning(
                "dead-lettering %s[%d]@%d: %s (%s)",
                record.topic,
                record.partition,
                record.offset,
                letter.reason,
                letter.error,
            )
            sends.append(
                await self._producer.send(
                    Topics.dead_letters(record.topic),
                    record.value,
                    key=record.key,
                    headers=encode_headers(headers),
                )
            )
        await asyncio.gather(*sends)
