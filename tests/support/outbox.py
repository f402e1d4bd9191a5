"""Knowing that the coordinator has published everything it has decided so far.

Every message the coordinator sends is an outbox row first, marked sent only after Kafka has
acknowledged it. So once no row is unsent, reading a topic up to its end offsets shows all the
coordinator has sent there: a test can check that something was *not* sent without watching
the topic for a while and hoping that was long enough.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.store.saga_store import SagaStore
from coordinator.store.schema import outbox
from tests.support.waiting import eventually

__all__ = ["mark_sent", "outbox_sent"]


async def mark_sent(conn: AsyncConnection, ids: Sequence[int], at: datetime) -> None:
    """Mark rows sent as versions before 0.2 did (they kept sent rows until housekeeping
    deleted them; the relay now deletes what it publishes)."""
    await conn.execute(sa.update(outbox).where(outbox.c.id.in_(ids)).values(sent_at=at))


async def outbox_sent(store: SagaStore) -> None:
    """Wait until no outbox row of ``store``'s database is unsent."""

    async def nothing_unsent() -> bool:
        async with store.engine.connect() as conn:
            unsent, _ = await store.select_outbox_stats(conn, datetime.now(UTC))
        assert unsent == 0, f"{unsent} outbox row(s) not sent yet"
        return True

    await eventually(nothing_unsent, what="the outbox relay to send every row")
