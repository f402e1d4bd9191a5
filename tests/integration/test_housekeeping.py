"""Housekeeping deletes sent outbox rows and aged inbox entries, and nothing else."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.config import HousekeepingSettings
from coordinator.core.clock import FakeClock
from coordinator.runtime.housekeeping import Housekeeper
from coordinator.store.migrate import upgrade_database
from coordinator.store.records import OutboxMessage
from coordinator.store.saga_store import SagaStore
from coordinator.store.schema import inbox, outbox


def _message(index: int) -> OutboxMessage:
    return OutboxMessage(
        saga_id=f"s{index}", topic="t", key=b"k", value=b"v", headers={}, message_id=f"m{index}"
    )


async def test_a_sweep_deletes_only_what_outlived_its_retention(
    database_url: str, db_engine: AsyncEngine
) -> None:
    await upgrade_database(database_url)
    store = SagaStore(db_engine)
    clock = FakeClock()
    start = clock.now()
    async with db_engine.begin() as conn:
        old_ids = await store.insert_outbox(conn, [_message(i) for i in range(5)], start)
        await store.mark_outbox_sent(conn, old_ids[:4], start)  # one old row is still unsent
        await store.insert_inbox(conn, [(f"old-{i}", "s") for i in range(7)], start)
    clock.advance(timedelta(hours=2))
    async with db_engine.begin() as conn:
        new_ids = await store.insert_outbox(conn, [_message(i) for i in range(5, 8)], clock.now())
        await store.mark_outbox_sent(conn, new_ids, clock.now())
        await store.insert_inbox(conn, [("new", "s")], clock.now())
    settings = HousekeepingSettings(outbox_retention_s=3_600, inbox_retention_s=5_400, batch_size=2)
    result = await Housekeeper(store, clock, settings).sweep_once()
    assert (result.outbox, result.inbox) == (4, 7)  # in chunks of 2: the loop went on
    async with db_engine.connect() as conn:
        left = set((await conn.execute(select(outbox.c.id))).scalars())
        ids = set((await conn.execute(select(inbox.c.message_id))).scalars())
        assert left == {old_ids[4], *new_ids}
        assert ids == {"new"}
        assert await conn.scalar(select(func.count()).select_from(outbox)) == 4
