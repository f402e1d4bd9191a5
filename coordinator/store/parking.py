"""Parked replies: kept for a saga whose definition version the receiving coordinator lacks.

During a rolling deploy, a reply can reach a coordinator that does not have the definition
version its saga started with. That coordinator must neither advance the saga with another
version nor drop the reply: it parks the reply here, in the same transaction as the rest of
its batch, and its Kafka offset moves on. A coordinator that has the version takes the parked
replies (``FOR UPDATE SKIP LOCKED``) and applies them through its batch processor, whose inbox
de-duplicates them like any redelivery. A saga is *parked* while it has rows here.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.store.schema import parked_reply

__all__ = ["ParkedReply", "ParkedSaga", "ParkingStore"]


@dataclass(frozen=True)
class ParkedReply:
    """One parked reply: the envelope's bytes and the version its saga needs."""

    message_id: str
    saga_id: str
    saga_type: str
    definition_version: int
    body: bytes


@dataclass(frozen=True)
class ParkedSaga:
    """A saga with replies waiting for a coordinator that has its definition version."""

    saga_id: str
    saga_type: str
    definition_version: int
    replies: int
    parked_since: datetime
    parked_by: str


class ParkingStore:
    """Inserts, claims, deletes and counts parked replies."""

    async def insert_parked(
        self,
        conn: AsyncConnection,
        replies: Sequence[ParkedReply],
        parked_by: str,
        now: datetime,
    ) -> None:
        """Park ``replies``; one already parked (same message id) is kept once."""
        if not replies:
            return
        stmt = pg_insert(parked_reply).values(
            [
                {
                    "message_id": r.message_id,
                    "saga_id": r.saga_id,
                    "saga_type": r.saga_type,
                    "definition_version": r.definition_version,
                    "body": r.body,
                    "parked_by": parked_by,
                    "parked_at": now,
                }
                for r in replies
            ]
        )
        # DO NOTHING: a redelivered reply parked twice is still one reply.
        await conn.execute(stmt.on_conflict_do_nothing(index_elements=["message_id"]))

    async def claim_parked(
        self, conn: AsyncConnection, versions: Collection[tuple[str, int]], limit: int
    ) -> list[ParkedReply]:
        """Lock and return up to ``limit`` parked replies of the given (type, version) pairs,
        oldest first. The locks last until the caller's transaction ends."""
        if not versions:
            return []
        table = parked_reply.c
        stmt = (
            sa.select(
                table.message_id,
                table.saga_id,
                table.saga_type,
                table.definition_version,
                table.body,
            )
            .where(sa.tuple_(table.saga_type, table.definition_version).in_(sorted(versions)))
            .order_by(table.seq)
            .limit(limit)
            # SKIP LOCKED: several capable coordinators resume at once, each reply in one.
            .with_for_update(skip_locked=True)
        )
        result = await conn.execute(stmt)
        return [
            ParkedReply(r.message_id, r.saga_id, r.saga_type, r.definition_version, r.body)
            for r in result
        ]

    async def delete_parked(self, conn: AsyncConnection, message_ids: Collection[str]) -> None:
        """Forget parked replies once they have been applied."""
        if message_ids:
            await conn.execute(
                sa.delete(parked_reply).where(parked_reply.c.message_id.in_(sorted(message_ids)))
            )

    async def select_parked_sagas(
        self, conn: AsyncConnection, *, limit: int = 100
    ) -> list[ParkedSaga]:
        """The parked sagas, longest parked first."""
        table = parked_reply.c
        stmt = (
            sa.select(
                table.saga_id,
                table.saga_type,
                table.definition_version,
                sa.func.count().label("replies"),
                sa.func.min(table.parked_at).label("since"),
                sa.func.max(table.parked_by).label("parked_by"),
            )
            .group_by(table.saga_id, table.saga_type, table.definition_version)
            .order_by(sa.text("since"), table.saga_id)
            .limit(limit)
        )
        result = await conn.execute(stmt)
        return [
            ParkedSaga(
                r.saga_id, r.saga_type, r.definition_version, r.replies, r.since, r.parked_by
            )
            for r in result
        ]

    async def count_parked_sagas(self, conn: AsyncConnection) -> dict[tuple[str, int], int]:
        """How many sagas are parked, by saga type and definition version."""
        table = parked_reply.c
        stmt = sa.select(
            table.saga_type,
            table.definition_version,
            sa.func.count(sa.distinct(table.saga_id)),
        ).group_by(table.saga_type, table.definition_version)
        result = await conn.execute(stmt)
        return {(row[0], row[1]): row[2] for row in result}
