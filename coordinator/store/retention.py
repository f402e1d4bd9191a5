"""Retention: finished sagas (and, by cascade, their history) deleted after an age.

Only COMPLETED and COMPENSATED sagas go. A FAILED saga waits for an operator and a RUNNING,
COMPENSATING or QUEUED one is still at work: neither is ever deleted, whatever its age.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.core.state import SagaStatus
from coordinator.store.schema import saga_instance

__all__ = ["RETAINED_STATUSES", "SagaRetention"]

RETAINED_STATUSES = (SagaStatus.COMPLETED, SagaStatus.COMPENSATED)
"""The statuses whose sagas retention deletes once old enough."""


class SagaRetention:
    """Deletes finished sagas older than a cutoff, a bounded batch per call."""

    async def delete_finished(
        self, conn: AsyncConnection, finished_before: datetime, limit: int
    ) -> int:
        """Delete up to ``limit`` sagas finished before ``finished_before``; return how many.

        Their history goes with them (``ON DELETE CASCADE``). Call again while it returns
        ``limit``.
        """
        if finished_before.utcoffset() is None:
            raise ValueError(f"finished_before must be timezone-aware, got {finished_before!r}")
        c = saga_instance.c
        doomed = (
            sa.select(c.saga_id)
            .where(c.completed_at < finished_before)
            .where(c.status.in_([s.value for s in RETAINED_STATUSES]))
            .order_by(c.completed_at)
            .limit(limit)
            # SKIP LOCKED: a saga row another transaction holds is left for the next sweep.
            .with_for_update(skip_locked=True)
        )
        result = await conn.execute(sa.delete(saga_instance).where(c.saga_id.in_(doomed)))
        return result.rowcount
