"""Repeated starts: the same saga id started again, with the same data or with other data.

Starting is idempotent per saga id: the first start wins. A repeat whose data matches what the
saga started with (:func:`~coordinator.core.starts.starts_alike`, unknown fields ignored as
everywhere) is a duplicate and changes nothing. A repeat with other data, or another saga type,
would otherwise be dropped without a trace: it is rejected (dead letter ``conflicting_start``
on Kafka, :class:`ConflictingStartError` for the Python and HTTP callers, 409 over HTTP) and a
``conflicting_start`` entry in the stored saga's history records what was refused.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.core.batch import BatchOutcome, Rejection
from coordinator.core.definition import SagaRegistry, unknown_fields
from coordinator.core.errors import ConflictingStartError
from coordinator.core.starts import starts_alike
from coordinator.core.state import HistoryEntry, HistoryKind, Transition
from coordinator.store.saga_store import SagaStore
from coordinator.store.starts import StartStore
from service_sdk.contract import DeadLetterReason, Envelope

__all__ = ["RepeatedStarts"]

logger = logging.getLogger(__name__)


class RepeatedStarts:
    """Tells duplicate starts from conflicting ones, inside the batch's transaction."""

    def __init__(self, store: SagaStore, registry: SagaRegistry) -> None:
        self._store = store
        self._registry = registry
        self._starts = StartStore()

    async def settle(
        self,
        conn: AsyncConnection,
        repeats: Sequence[tuple[int, Envelope]],
        first_in_batch: Mapping[str, Transition],
        outcome: BatchOutcome,
        now: datetime,
    ) -> None:
        """Count each repeat as a duplicate, or reject it as a conflicting start.

        ``first_in_batch`` holds the starts of this batch by saga id (their history is not
        written yet); older sagas are compared with their recorded start.
        """
        if not repeats:
            return
        older = {e.saga_id for _, e in repeats if e.saga_id not in first_in_batch}
        stored = await self._starts.select_start_data(conn, older)
        history: list[tuple[str, HistoryEntry]] = []
        for index, envelope in repeats:
            first = first_in_batch.get(envelope.saga_id)
            saga_type, recorded = (
                (first.instance.saga_type, first.instance.data)
                if first is not None
                else stored.get(envelope.saga_id, (envelope.saga_type, None))
            )
            if recorded is None or self._alike(envelope, saga_type, recorded):
                outcome.duplicates += 1  # the same start again (or nothing left to compare)
                continue
            error = ConflictingStartError(
                f"saga {envelope.saga_id!r} exists already ({saga_type}) and was started with "
                "other data; the first start stands (use a new saga id for a new saga)",
                saga_id=envelope.saga_id,
            )
            outcome.rejections.append(Rejection(index, DeadLetterReason.CONFLICTING_START, error))
            detail: dict[str, Any] = {"saga_type": envelope.saga_type, "data": envelope.payload}
            if envelope.source:
                detail["source"] = envelope.source
            history.append(
                (
                    envelope.saga_id,
                    HistoryEntry(HistoryKind.CONFLICTING_START, None, envelope.message_id, detail),
                )
            )
            logger.warning(
                "start %s refused: %s", envelope.message_id, error, extra={"saga_id": error.saga_id}
            )
        await self._store.insert_history(conn, history, now)

    def _alike(self, envelope: Envelope, saga_type: str, recorded: Mapping[str, Any]) -> bool:
        if envelope.saga_type != saga_type:
            return False
        given = dict(envelope.payload)
        if saga_type in self._registry:
            for name in unknown_fields(self._registry.get(saga_type).data_model, given):
                del given[name]
        return starts_alike(recorded, given)
