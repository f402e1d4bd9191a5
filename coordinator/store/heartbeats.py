"""Participant heartbeats: which services are alive, by the coordinator's own clock."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.store.schema import participant_heartbeat

__all__ = ["HeartbeatStore"]


class HeartbeatStore:
    """Records heartbeats and answers "which services were heard from since ...?"."""

    async def upsert(
        self, conn: AsyncConnection, instances: Collection[tuple[str, str]], now: datetime
    ) -> None:
        """Mark ``(service, instance)`` pairs as seen at ``now``."""
        if not instances:
            return
        stmt = pg_insert(participant_heartbeat).values(
            [{"service": s, "instance": i, "last_seen": now} for s, i in sorted(set(instances))]
        )
        # Sorted rows and ON CONFLICT: concurrent listeners never deadlock and never duplicate.
        stmt = stmt.on_conflict_do_update(
            index_elements=["service", "instance"],
            set_={"last_seen": sa.func.greatest(participant_heartbeat.c.last_seen, now)},
        )
        await conn.execute(stmt)

    async def select_live_services(self, conn: AsyncConnection, since: datetime) -> set[str]:
        """Services with an instance heard from at or after ``since``."""
        stmt = (
            sa.select(participant_heartbeat.c.service)
            .where(participant_heartbeat.c.last_seen >= since)
            .distinct()
        )
        return set((await conn.execute(stmt)).scalars().all())

    async def any_heard_from(self, conn: AsyncConnection) -> bool:
        """Whether any participant instance is on record (heartbeats are in use at all)."""
        stmt = sa.select(sa.literal(1)).select_from(participant_heartbeat).limit(1)
        return (await conn.execute(stmt)).first() is not None

    async def count_live_instances(self, conn: AsyncConnection, since: datetime) -> dict[str, int]:
        """Instances per service heard from at or after ``since``."""
        stmt = (
            sa.select(participant_heartbeat.c.service, sa.func.count())
            .where(participant_heartbeat.c.last_seen >= since)
            .group_by(participant_heartbeat.c.service)
        )
        return {row[0]: int(row[1]) for row in (await conn.execute(stmt)).all()}

    async def delete_older_than(self, conn: AsyncConnection, before: datetime) -> int:
        """Forget instances not heard from since ``before`` (housekeeping)."""
        stmt = sa.delete(participant_heartbeat).where(participant_heartbeat.c.last_seen < before)
        return (await conn.execute(stmt)).rowcount or 0
