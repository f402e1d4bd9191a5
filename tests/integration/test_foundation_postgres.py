"""PostgreSQL through SQLAlchemy 2 async + asyncpg, and the SKIP LOCKED claim the relay uses."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    from coordinator.devstack import PostgresService

metadata = MetaData()
jobs = Table(
    "jobs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("payload", JSONB, nullable=False),
    Column("due_at", DateTime(timezone=True), nullable=False),
    Column("claimed_by", String(20)),
)
ROWS = 200


async def _claim(connection: AsyncConnection, worker: str, limit: int) -> list[int]:
    # FOR UPDATE SKIP LOCKED: rows another open transaction holds are skipped, not waited for.
    claimable = (
        select(jobs.c.id)
        .where(jobs.c.claimed_by.is_(None))
        .order_by(jobs.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    ids = list((await connection.scalars(claimable)).all())
    if ids:
        await connection.execute(update(jobs).where(jobs.c.id.in_(ids)).values(claimed_by=worker))
    return ids


async def _fill(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
        now = datetime.now(UTC)
        await connection.execute(
            insert(jobs), [{"id": i, "payload": {"n": i}, "due_at": now} for i in range(ROWS)]
        )


async def test_server_reports_its_version(postgres: PostgresService) -> None:
    assert postgres.version.split(".")[0].isdigit()
    assert postgres.url.startswith("postgresql+asyncpg://")


async def test_table_round_trip(db_engine: AsyncEngine) -> None:
    due = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    async with db_engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
        await connection.execute(
            insert(jobs).values(id=1, payload={"saga": "order", "items": [1, 2]}, due_at=due)
        )
    async with db_engine.connect() as connection:
        row = (await connection.execute(select(jobs).where(jobs.c.id == 1))).one()
        database = await connection.scalar(select(func.current_database()))
    assert row.payload == {"saga": "order", "items": [1, 2]}
    assert row.due_at == due
    assert row.claimed_by is None
    assert str(database).startswith("test_")


async def test_skip_locked_claims_never_overlap(db_engine: AsyncEngine) -> None:
    await _fill(db_engine)

    # Two open transactions at once: the second skips what the first holds.
    async with db_engine.connect() as first, db_engine.connect() as second:
        first_tx, second_tx = await first.begin(), await second.begin()
        claimed_first = await _claim(first, "first", 10)
        claimed_second = await _claim(second, "second", 10)
        await first_tx.commit()
        await second_tx.commit()
    assert claimed_first == list(range(10))
    assert claimed_second == list(range(10, 20))

    # Two workers racing until nothing is left: disjoint and complete.
    async def worker(name: str) -> list[int]:
        claimed: list[int] = []
        async with db_engine.connect() as connection:
            while True:
                async with connection.begin():
                    ids = await _claim(connection, name, 7)
                    await asyncio.sleep(0.005)  # hold the row locks while the other claims
                if not ids:
                    return claimed
                claimed += ids

    a, b = await asyncio.gather(worker("a"), worker("b"))
    assert a, "worker a claimed nothing"
    assert b, "worker b claimed nothing"
    assert set(a).isdisjoint(b)
    assert sorted(a + b + claimed_first + claimed_second) == list(range(ROWS))
    async with db_engine.connect() as connection:
        owners = dict((await connection.execute(select(jobs.c.id, jobs.c.claimed_by))).all())
    assert all(owners[i] == "a" for i in a)
    assert all(owners[i] == "b" for i in b)
