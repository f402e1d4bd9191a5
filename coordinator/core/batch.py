"""What applying one batch of start requests and replies decided (pure data)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from coordinator.core.state import SagaInstance, Transition
from service_sdk.contract import DeadLetterReason, Envelope

__all__ = ["BatchOutcome", "Rejection", "count_unknown_fields"]


@dataclass(frozen=True)
class Rejection:
    """A message of the batch that could not be applied."""

    index: int
    reason: DeadLetterReason
    error: Exception


@dataclass
class BatchOutcome:
    """What one batch did."""

    applied: int = 0
    duplicates: int = 0
    parked: int = 0
    """Replies kept for a coordinator that has their saga's definition version."""
    rejections: list[Rejection] = field(default_factory=list)
    outbox_ids: list[int] = field(default_factory=list)
    transitions: list[tuple[SagaInstance | None, Transition]] = field(default_factory=list)
    """(state before, transition) pairs; before is None for a start."""
    records: int = 0
    """Kafka records in the batch, undecodable ones included (set by the consumer)."""
    unknown_fields: dict[tuple[str, str], int] = field(default_factory=dict)
    """Envelope fields this contract version does not define, ignored: how many times each
    ``(message_type, field)`` was seen (set by the consumer)."""


def count_unknown_fields(envelopes: Iterable[Envelope]) -> dict[tuple[str, str], int]:
    """How often each ``(message_type, field)`` unknown envelope field occurs in ``envelopes``."""
    counts: dict[tuple[str, str], int] = {}
    for envelope in envelopes:
        for name in envelope.unknown_fields:
            key = (envelope.message_type, name)
            counts[key] = counts.get(key, 0) + 1
    return counts
