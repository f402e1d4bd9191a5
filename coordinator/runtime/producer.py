"""The coordinator's Kafka producer, renewed when the broker lost its idempotence state.

After a long broker outage the idempotent producer's sequence numbers may no longer match
what the broker remembers: every send then fails with ``OutOfOrderSequenceNumber`` or
``UnknownProducerId`` until the producer is recreated. The SDK's
:class:`~service_sdk.producer.ProducerHandle` does that (a failed send marks the producer
broken, the next send starts a new one); what was not acknowledged is sent again by its owner
(outbox rows stay unsent, dead letters are published again).
"""

from __future__ import annotations

from coordinator.config import KafkaSettings
from coordinator.runtime.kafka import create_producer
from service_sdk.producer import ProducerHandle

__all__ = ["ProducerHandle", "coordinator_producers"]


def coordinator_producers(settings: KafkaSettings) -> ProducerHandle:
    """The handle every sender of a coordinator process shares (not started)."""
    return ProducerHandle(lambda: create_producer(settings), name="coordinator")
