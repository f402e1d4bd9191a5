"""Read-side queries for operators: sagas by any filter, counts per status, how far back.

Kept apart from :mod:`coordinator.store.saga_store`, whose statements are the hot path; these
serve the console, the API's list and ``saga list``. Every list is a page (``LIMIT``), newest
first on ``(created_at, saga_id)``, which ``ix_saga_instance_created_at`` serves; a business
key search uses the GIN index on ``business_keys``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.core.state import SagaInstance, SagaStatus
from coordinator.store.saga_store import saga_from_row
from coordinator.store.schema import saga_instance

__all__ = ["DataHorizon", "SagaFilter", "SagaQueries"]


@dataclass(frozen=True)
class SagaFilter:
    """Which sagas to list; every given criterion must match.

    Attributes:
        statuses: Any of these statuses (empty: all).
        saga_type: This saga type.
        definition_version: This definition version.
        started_from: Started at or after (timezone-aware).
        started_until: Started before (timezone-aware).
        failure_reason: The failure reason contains this text (case-insensitive).
        business_key: A stored key, ``name=value`` (see :mod:`coordinator.core.business_keys`).
        saga_id_prefix: The saga id starts with this.
    """

    statuses: tuple[SagaStatus, ...] = ()
    saga_type: str | None = None
    definition_version: int | None = None
    started_from: datetime | None = None
    started_until: datetime | None = None
    failure_reason: str | None = None
    business_key: str | None = None
    saga_id_prefix: str | None = None

    def __post_init__(self) -> None:
        for name in ("started_from", "started_until"):
            value: datetime | None = getattr(self, name)
            if value is not None and value.utcoffset() is None:
                raise ValueError(f"{name} must be timezone-aware, got {value.isoformat()}")


@dataclass(frozen=True)
class DataHorizon:
    """How far back the store's data goes.

    Attributes:
        oldest_started_at: When the oldest saga still stored started (None: no saga).
        oldest_finished_at: When the longest-finished saga still stored finished.
    """

    oldest_started_at: datetime | None
    oldest_finished_at: datetime | None


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _where(stmt: sa.Select[tuple[object, ...]], f: SagaFilter) -> sa.Select[tuple[object, ...]]:
    c = saga_instance.c
    if f.statuses:
        stmt = stmt.where(c.status.in_([s.value for s in f.statuses]))
    if f.saga_type is not None:
        stmt = stmt.where(c.saga_type == f.saga_type)
    if f.definition_version is not None:
        stmt = stmt.where(c.definition_version == f.definition_version)
    if f.started_from is not None:
        stmt = stmt.where(c.created_at >= f.started_from)
    if f.started_until is not None:
        stmt = stmt.where(c.created_at < f.started_until)
    if f.failure_reason:
        # IS NOT NULL, implied by the ILIKE, spelled out for the partial index's planner.
        stmt = stmt.where(c.failure_reason.is_not(None))
        stmt = stmt.where(c.failure_reason.ilike(f"%{_escape_like(f.failure_reason)}%"))
    if f.business_key is not None:
        key = sa.cast(sa.literal([f.business_key], ARRAY(sa.Text)), ARRAY(sa.Text))
        stmt = stmt.where(c.business_keys.contains(key))
    if f.saga_id_prefix:
        stmt = stmt.where(c.saga_id.startswith(f.saga_id_prefix, autoescape=True))
    return stmt


class SagaQueries:
    """The operators' read queries; each takes a connection the caller opened."""

    async def select_sagas(
        self, conn: AsyncConnection, f: SagaFilter, *, limit: int, offset: int = 0
    ) -> list[SagaInstance]:
        """A page of the sagas matching ``f``, newest first."""
        stmt = _where(sa.select(saga_instance), f)
        stmt = stmt.order_by(
            saga_instance.c.created_at.desc(), saga_instance.c.saga_id.desc()
        ).limit(limit)
        if offset:
            stmt = stmt.offset(offset)
        result = await conn.execute(stmt)
        return [saga_from_row(row) for row in result.mappings()]

    async def count_by_status(
        self, conn: AsyncConnection, f: SagaFilter | None = None
    ) -> dict[SagaStatus, int]:
        """How many sagas match ``f`` (statuses aside) per status; absent ones have none."""
        stmt = sa.select(saga_instance.c.status, sa.func.count().label("n")).group_by(
            saga_instance.c.status
        )
        if f is not None:
            stmt = _where(stmt, SagaFilter(**{**f.__dict__, "statuses": ()}))
        result = await conn.execute(stmt)
        return {SagaStatus(row.status): int(row.n) for row in result}

    async def select_horizon(self, conn: AsyncConnection) -> DataHorizon:
        """How far back the stored sagas go (two index lookups, one round-trip)."""
        started = sa.select(sa.func.min(saga_instance.c.created_at)).scalar_subquery()
        finished = sa.select(sa.func.min(saga_instance.c.completed_at)).scalar_subquery()
        row = (await conn.execute(sa.select(started, finished))).one()
        return DataHorizon(row[0], row[1])
