"""The row types the store hands out and takes in: outbox messages and history lines."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = ["HistoryRecord", "OutboxMessage", "OutboxRecord"]


@dataclass(frozen=True)
class OutboxMessage:
    """A Kafka message to publish once the transaction that wrote it commits."""

    saga_id: str
    topic: str
    key: bytes
    value: bytes
    headers: dict[str, str]
    message_id: str

    def stored(self, row_id: int, created_at: datetime) -> OutboxRecord:
        """This message as the outbox row ``row_id`` written at ``created_at``."""
        return OutboxRecord(
            id=row_id,
            saga_id=self.saga_id,
            topic=self.topic,
            key=self.key,
            value=self.value,
            headers=self.headers,
            message_id=self.message_id,
            created_at=created_at,
        )


@dataclass(frozen=True)
class OutboxRecord:
    """An unsent outbox row claimed by the relay."""

    id: int
    saga_id: str
    topic: str
    key: bytes
    value: bytes
    headers: dict[str, str]
    message_id: str
    created_at: datetime


@dataclass(frozen=True)
class HistoryRecord:
    """One stored line of a saga's history.

    ``kind`` is a plain string: rows written by a newer coordinator may carry kinds this one
    does not know, and reading the history must not fail on them.
    """

    id: int
    saga_id: str
    at: datetime
    kind: str
    step: str | None
    message_id: str | None
    detail: dict[str, Any]
