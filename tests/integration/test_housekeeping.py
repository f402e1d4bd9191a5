"""Housekeeping deletes sent outbox rows, aged inbox entries and old finished sagas, and
nothing else; the operators' queries find sagas by business key."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.config import HousekeepingSettings
from coordinator.core.clock import FakeClock
from coordinator.core.state import HistoryEntry, HistoryKind, SagaInstance, SagaStatus
from coordinator.runtime.housekeeping import Housekeeper
from coordinator.store.migrate import upgrade_database
from coordinator.store.records import OutboxMessage
from coordinator.store.saga_queries import SagaFilter, SagaQueries
from coordinator.store.saga_store import SagaStore
from coordinator.store.schema import inbox, outbox, saga_history, saga_instance
from tests.support.outbox import mark_sent


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
        await mark_sent(conn, old_ids[:4], start)  # one old row is still unsent
        await store.insert_inbox(conn, [(f"old-{i}", "s") for i in range(7)], start)
    clock.advance(timedelta(hours=2))
    async with db_engine.begin() as conn:
        new_ids = await store.insert_outbox(conn, [_message(i) for i in range(5, 8)], clock.now())
        await mark_sent(conn, new_ids, clock.now())
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


def _saga(saga_id: str, status: SagaStatus, at: datetime, **data: Any) -> SagaInstance:
    return SagaInstance(
        saga_id=saga_id,
        saga_type="order",
        definition_version=1,
        status=status,
        data=dict(data),
        created_at=at,
        updated_at=at,
        business_keys=tuple(f"{k}={v}" for k, v in data.items()),
    )


async def test_retention_deletes_old_finished_sagas_with_their_history_never_running_ones(
    database_url: str, db_engine: AsyncEngine
) -> None:
    await upgrade_database(database_url)
    store = SagaStore(db_engine)
    clock = FakeClock()
    old = clock.now()
    statuses = list(SagaStatus)
    # Every status, long ago: only COMPLETED and COMPENSATED may go.
    aged = [_saga(f"old-{s.value}-{n}", s, old) for s in statuses for n in range(3)]
    async with db_engine.begin() as conn:
        await store.insert_sagas(conn, aged)
        await store.insert_history(
            conn, [(s.saga_id, HistoryEntry(HistoryKind.STARTED)) for s in aged], old
        )
    clock.advance(timedelta(days=40))
    recent = [_saga(f"new-{s.value}", s, clock.now()) for s in statuses]
    async with db_engine.begin() as conn:
        await store.insert_sagas(conn, recent)
    settings = HousekeepingSettings(saga_retention_s=30 * 86_400, saga_batch_size=2)
    result = await Housekeeper(store, clock, settings).sweep_once()
    assert result.sagas == 6  # in batches of 2: the loop went on
    async with db_engine.connect() as conn:
        left = set((await conn.execute(select(saga_instance.c.saga_id))).scalars())
        history = set((await conn.execute(select(saga_history.c.saga_id))).scalars())
    gone = {s.saga_id for s in aged if s.status in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED)}
    assert left == {s.saga_id for s in aged + recent} - gone
    assert history == {s.saga_id for s in aged} - gone
    # The store says how far back its data goes.
    async with db_engine.connect() as conn:
        horizon = await SagaQueries().select_horizon(conn)
    assert horizon.oldest_started_at == old  # a FAILED or running saga from then remains


async def test_retention_off_keeps_every_saga(database_url: str, db_engine: AsyncEngine) -> None:
    await upgrade_database(database_url)
    store = SagaStore(db_engine)
    clock = FakeClock()
    async with db_engine.begin() as conn:
        await store.insert_sagas(conn, [_saga("done", SagaStatus.COMPLETED, clock.now())])
    clock.advance(timedelta(days=4_000))
    settings = HousekeepingSettings.model_validate({"saga_retention_s": "off"})
    assert (await Housekeeper(store, clock, settings).sweep_once()).sagas == 0


async def test_sagas_are_found_by_business_key_and_filters(
    database_url: str, db_engine: AsyncEngine
) -> None:
    await upgrade_database(database_url)
    store = SagaStore(db_engine)
    clock = FakeClock()
    sagas = [
        _saga(
            f"s-{n}",
            SagaStatus.RUNNING if n % 2 else SagaStatus.FAILED,
            clock.now(),
            order_id=f"A-{n}",
            customer_id="c-1" if n < 3 else "c-2",
        )
        for n in range(6)
    ]
    async with db_engine.begin() as conn:
        await store.insert_sagas(conn, sagas)
    queries = SagaQueries()
    async with db_engine.connect() as conn:
        one = await queries.select_sagas(conn, SagaFilter(business_key="order_id=A-4"), limit=10)
        customer = await queries.select_sagas(
            conn,
            SagaFilter(business_key="customer_id=c-1", statuses=(SagaStatus.RUNNING,)),
            limit=10,
        )
        counts = await queries.count_by_status(conn, SagaFilter(business_key="customer_id=c-2"))
    assert [s.saga_id for s in one] == ["s-4"]
    assert one[0].business_keys == ("order_id=A-4", "customer_id=c-2")
    assert [s.saga_id for s in customer] == ["s-1"]
    assert counts == {SagaStatus.RUNNING: 2, SagaStatus.FAILED: 1}
