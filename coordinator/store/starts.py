"""What sagas started with: the data of their first ``started``/``queued`` history entry."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.core.starts import START_KINDS
from coordinator.store.schema import saga_history, saga_instance

__all__ = ["StartStore"]


class StartStore:
    """Reads the type and start data of existing sagas, to compare a repeated start with."""

    async def select_start_data(
        self, conn: AsyncConnection, saga_ids: Collection[str]
    ) -> dict[str, tuple[str, dict[str, Any]]]:
        """``saga_id -> (saga_type, data it started with)`` for the sagas that exist."""
        if not saga_ids:
            return {}
        earliest = (
            sa.select(sa.func.min(saga_history.c.id))
            .where(saga_history.c.saga_id.in_(sorted(saga_ids)))
            .where(saga_history.c.kind.in_(START_KINDS))
            .group_by(saga_history.c.saga_id)
        )
        first = (
            sa.select(saga_history.c.saga_id, saga_history.c.detail, saga_instance.c.saga_type)
            .join(saga_instance, saga_instance.c.saga_id == saga_history.c.saga_id)
            .where(saga_history.c.id.in_(earliest.scalar_subquery()))
        )
        result = await conn.execute(first)
        found: dict[str, tuple[str, dict[str, Any]]] = {}
        for row in result:
            data = row.detail.get("data") if isinstance(row.detail, dict) else None
            found[row.saga_id] = (row.saga_type, data if isinstance(data, dict) else {})
        return found
