"""A broker that refuses the idempotent producer gets an error that says what to change."""

from __future__ import annotations

import pytest
from aiokafka.errors import UnknownError

from coordinator.config import KafkaSettings
from coordinator.devstack import EmbeddedKafka
from coordinator.runtime.kafka import start_producer


async def test_the_embedded_broker_refuses_idempotence_with_a_hint_and_works_without() -> None:
    # Started here whatever SAGA_TEST_KAFKA says: this is about that broker's limits.
    async with EmbeddedKafka() as broker:
        settings = KafkaSettings(bootstrap_servers=broker.bootstrap_servers, idempotent=True)
        with pytest.raises(UnknownError, match="SAGA_KAFKA__IDEMPOTENT=false"):
            await start_producer(settings)
        producer = await start_producer(settings.model_copy(update={"idempotent": False}))
        try:
            metadata = await producer.send_and_wait("probe", b"x", key=b"k")
            assert metadata.offset == 0
        finally:
            await producer.stop()
