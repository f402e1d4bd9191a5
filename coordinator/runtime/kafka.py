"""Kafka client construction and topic administration for the coordinator."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, UnknownError

from coordinator.config import KafkaSettings
from service_sdk.partitioner import KeyPartitioner

__all__ = [
    "create_producer",
    "ensure_topics",
    "explain_start_failure",
    "producer_kwargs",
    "start_producer",
]

logger = logging.getLogger(__name__)


_AIOKAFKA_MAX_REQUEST_SIZE = 1_048_576
# What aiokafka counts on top of a record's key, body and headers when it checks
# max_request_size: the batch header (61 bytes) and each record's and header's varints.
_RECORD_OVERHEAD = 1_024


def producer_kwargs(settings: KafkaSettings) -> dict[str, Any]:
    """Producer settings: idempotent (implies acks=all) unless the broker cannot do it, and
    records up to ``max_message_bytes`` let through to the broker (which has the last word)."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": settings.client_id,
        "acks": "all",
        "enable_idempotence": settings.idempotent,
        # No linger: the relay appends a whole batch before the sender task can run, so its
        # messages share requests anyway; lingering only delayed every command (2 ms a hop).
        "linger_ms": 0,
        # aiokafka's own 1 MiB would refuse, as never sendable, a record the operator allowed.
        "max_request_size": max(
            _AIOKAFKA_MAX_REQUEST_SIZE, settings.max_message_bytes + _RECORD_OVERHEAD
        ),
        # Kafka's partitioning (murmur2 of the key, remembered for a saga's later messages)
        # without aiokafka's per-record cost: about 3 % of the coordinator's CPU.
        "partitioner": KeyPartitioner(),
    }
    return kwargs


def create_producer(settings: KafkaSettings) -> AIOKafkaProducer:
    """A producer configured from ``settings`` (not started)."""
    return AIOKafkaProducer(**producer_kwargs(settings))


async def start_producer(settings: KafkaSettings) -> AIOKafkaProducer:
    """A started producer; on failure it is closed and the error says what to check.

    Raises:
        KafkaError: The broker cannot be reached, or refuses the idempotent producer.
    """
    producer = create_producer(settings)
    try:
        await producer.start()
    except KafkaError as exc:
        await producer.stop()
        failure = explain_start_failure(settings, exc)
        if failure is exc:
            raise
        raise failure from exc
    return producer


def explain_start_failure(settings: KafkaSettings, exc: KafkaError) -> KafkaError:
    """``exc``, or a clearer error when the broker refused the idempotent producer."""
    if settings.idempotent and isinstance(exc, UnknownError):
        # Brokers without InitProducerId (such as the embedded one) answer this way.
        return UnknownError(
            f"the broker at {settings.bootstrap_servers} refused the idempotent "
            "producer; if it does not support idempotence (the embedded broker does not), "
            "set SAGA_KAFKA__IDEMPOTENT=false"
        )
    return exc


async def ensure_topics(
    bootstrap_servers: str, topics: Iterable[tuple[str, int]], *, client_id: str = "saga-admin"
) -> None:
    """Create the ``(name, partitions)`` topics that do not exist yet."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id=client_id)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(name=name, num_partitions=partitions, replication_factor=1)
            for name, partitions in topics
            if name not in existing
        ]
        if not missing:
            return
        # Another instance may create them between our list and our create.
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics(missing)
        logger.info("created topics %s", ", ".join(t.name for t in missing))
    finally:
        await admin.close()
