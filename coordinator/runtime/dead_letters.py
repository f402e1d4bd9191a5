"""Publishes messages the coordinator cannot process to the dead-letter topic of their topic."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aiokafka.structs import ConsumerRecord

from coordinator.runtime.producer import ProducerHandle
from service_sdk.contract import Header, decode_headers
from service_sdk.dead_letters import DeadLetterRecord

__all__ = ["DeadLetterPublisher", "RejectedRecord"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RejectedRecord:
    """A consumed record the coordinator rejects, bound for its dead-letter topic, and why."""

    record: ConsumerRecord[bytes, bytes]
    reason: str
    error: BaseException


class DeadLetterPublisher:
    """Sends dead letters with headers saying why and where from; waits for the broker's ack."""

    def __init__(
        self,
        producers: ProducerHandle,
        group_id: str,
        *,
        on_published: Callable[[Sequence[RejectedRecord]], None] | None = None,
    ) -> None:
        self._producers = producers
        self._group_id = group_id
        self._on_published = on_published

    async def publish(self, letters: Sequence[RejectedRecord]) -> None:
        """Publish every letter to ``<original topic>.dlq``; returns once all are acked.

        Raises:
            KafkaError: A send failed; the caller retries (a producer whose idempotence state
                the broker lost is renewed first).
        """
        await self._send(letters)
        if self._on_published is not None:
            self._on_published(letters)

    async def _send(self, letters: Sequence[RejectedRecord]) -> None:
        sends = []
        for letter in letters:
            record = letter.record
            original = decode_headers(record.headers)
            # The SDK's record keeps the original headers byte for byte (a decoded copy would
            # mangle values that are not UTF-8) and sheds detail that would not fit.
            dead = DeadLetterRecord.from_consumer_record(
                record, group=self._group_id, exc=letter.error, reason=letter.reason
            )
            logger.warning(
                "dead-lettering %s[%d]@%d: %s (%s)",
                record.topic,
                record.partition,
                record.offset,
                letter.reason,
                letter.error,
                extra={
                    "saga_id": original.get(Header.SAGA_ID),
                    "saga_type": original.get(Header.SAGA_TYPE),
                    "step": original.get(Header.STEP),
                    "message_id": original.get(Header.ID),
                    "command_id": original.get(Header.COMMAND_ID),
                },
            )
            sends.append(
                await self._producers.send(
                    dead.topic, value=dead.value, key=dead.key, headers=dead.headers
                )
            )
        await asyncio.gather(*sends)
