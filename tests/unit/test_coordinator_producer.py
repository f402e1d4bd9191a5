"""The coordinator's producer lets through every record ``max_message_bytes`` allows."""

from __future__ import annotations

from coordinator.config import KafkaSettings
from coordinator.runtime.kafka import producer_kwargs


def test_max_request_size_follows_max_message_bytes_with_room_for_overhead() -> None:
    assert producer_kwargs(KafkaSettings())["max_request_size"] == 1_048_576
    raised = producer_kwargs(KafkaSettings(max_message_bytes=5_000_000))
    assert raised["max_request_size"] > 5_000_000
