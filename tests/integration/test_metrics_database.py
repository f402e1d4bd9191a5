"""The transaction-time instrument must never raise: an exception from a SQLAlchemy event
hook replaces the one being handled (a cancellation, say) and breaks shutdown."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.observability.metrics import CoordinatorMetrics


class _Failed(Exception):
    pass


async def test_a_rollback_on_an_invalidated_connection_keeps_the_original_error(
    db_engine: AsyncEngine,
) -> None:
    metrics = CoordinatorMetrics(CollectorRegistry())
    metrics.instrument_engine(db_engine)

    async def fail_in_an_invalidated_transaction() -> None:
        async with db_engine.begin() as conn:
            await conn.execute(text("SELECT 1"))
            await conn.invalidate()
            raise _Failed

    with pytest.raises(_Failed):
        await fail_in_an_invalidated_transaction()
    async with db_engine.begin() as conn:  # the pool recovers; timing still works
        assert await conn.scalar(text("SELECT 1")) == 1
