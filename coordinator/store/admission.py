"""The queries of admission control: sagas in flight, and the QUEUED sagas to let go."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.core.admission import InFlight
from coordinator.core.state import SagaInstance
from coordinator.store.saga_store import saga_from_row
from coordinator.store.schema import ACTIVE_STATUSES, QUEUED_PREDICATE, saga_instance

__all__ = ["ADMISSION_LOCK_KEY", "AdmissionStore"]

ADMISSION_LOCK_KEY = 0x5A6A_C00D_0002
"""A transaction-level advisory lock: admission decisions of all coordinators take turns, so
two of them never fill the same free slot."""

_ACTIVE = sa.text("status IN ({})".format(", ".join(repr(str(s)) for s in ACTIVE_STATUSES)))

# Built once, so their cache keys are computed once (every batch of starts runs these).
_LOCK = sa.select(sa.func.pg_advisory_xact_lock(ADMISSION_LOCK_KEY))
_IN_FLIGHT = (
    sa.select(saga_instance.c.saga_type, saga_instance.c.service, sa.func.count())
    .where(_ACTIVE)
    .group_by(saga_instance.c.saga_type, saga_instance.c.service)
)
_QUEUED = sa.select(sa.func.count()).select_from(saga_instance).where(sa.text(QUEUED_PREDICATE))


class AdmissionStore:
    """Counts what is in flight and claims QUEUED sagas, inside the caller's transaction."""

    async def lock(self, conn: AsyncConnection) -> None:
        """Take the admission lock until the transaction ends."""
        await conn.execute(_LOCK)

    async def count_in_flight(self, conn: AsyncConnection) -> InFlight:
        """Sagas RUNNING or COMPENSATING, by type and by the service their command went to."""
        counted = InFlight()
        for row in (await conn.execute(_IN_FLIGHT)).all():
            saga_type: str = row[0]
            service: str | None = row[1]
            n: int = row[2]
            counted.total += n
            counted.by_type[saga_type] = counted.by_type.get(saga_type, 0) + n
            if service is not None:
                counted.by_service[service] = counted.by_service.get(service, 0) + n
        return counted

    async def count_outstanding(self, conn: AsyncConnection) -> dict[tuple[str, bool], int]:
        """Sagas in flight per ``(service, picked up)`` of the command they await."""
        picked = saga_instance.c.picked_up_at.is_not(None)
        stmt = (
            sa.select(saga_instance.c.service, picked, sa.func.count())
            .where(_ACTIVE)
            .where(saga_instance.c.service.is_not(None))
            .group_by(saga_instance.c.service, picked)
        )
        return {(row[0], bool(row[1])): int(row[2]) for row in (await conn.execute(stmt)).all()}

    async def count_queued(self, conn: AsyncConnection) -> int:
        """How many sagas wait for admission."""
        return int((await conn.execute(_QUEUED)).scalar_one())

    async def claim_queued(self, conn: AsyncConnection, limit: int) -> list[SagaInstance]:
        """Lock and return up to ``limit`` QUEUED sagas, oldest first."""
        stmt = (
            sa.select(saga_instance)
            # The partial index's predicate verbatim, so the planner can use that index.
            .where(sa.text(QUEUED_PREDICATE))
            .order_by(saga_instance.c.created_at, saga_instance.c.saga_id)
            .limit(limit)
            # SKIP LOCKED: a QUEUED saga locked by an operator's abort is simply taken later.
            .with_for_update(skip_locked=True)
        )
        return [saga_from_row(row) for row in (await conn.execute(stmt)).mappings()]
