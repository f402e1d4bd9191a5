"""The one write of a saga's definition version: an operator's migration."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.store.schema import saga_instance

__all__ = ["VersionStore"]


class VersionStore:
    """Sets ``definition_version``, which no transition of the engine ever changes."""

    async def update_definition_version(
        self, conn: AsyncConnection, saga_id: str, definition_version: int
    ) -> None:
        """Move the saga onto ``definition_version`` (in the caller's transaction, which holds
        the saga's row lock and persists the rest of the migration)."""
        await conn.execute(
            sa.update(saga_instance)
            .where(saga_instance.c.saga_id == saga_id)
            .values(definition_version=definition_version)
        )
