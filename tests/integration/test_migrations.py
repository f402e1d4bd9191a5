"""The packaged Alembic migrations against a real, empty PostgreSQL database."""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection

from coordinator.store.database import create_engine
from coordinator.store.migrate import (
    alembic_config,
    current_revision,
    head_revision,
    upgrade_database,
)
from coordinator.store.schema import SCHEMA, metadata

TABLES = {
    "saga_instance",
    "saga_history",
    "inbox",
    "outbox",
    "dead_letter_replay",
    "participant_heartbeat",
    "parked_reply",
    "saga_schedule",
    "saga_schedule_tick",
    "alembic_version",
}


async def _tables(url: str) -> set[str]:
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            result = await conn.execute(
                sa.text("SELECT tablename FROM pg_tables WHERE schemaname = :schema"),
                {"schema": SCHEMA},
            )
            return set(result.scalars())
    finally:
        await engine.dispose()


async def test_upgrade_empty_database_to_head(database_url: str) -> None:
    assert await current_revision(database_url) is None

    await upgrade_database(database_url)

    assert await current_revision(database_url) == head_revision()
    assert await _tables(database_url) == TABLES


async def test_upgrade_twice_is_a_no_op(database_url: str) -> None:
    await upgrade_database(database_url)
    await upgrade_database(database_url)

    assert await current_revision(database_url) == head_revision()


async def test_concurrent_upgrades_serialise(database_url: str) -> None:
    # Several coordinators starting at once: the advisory lock lets one migrate, the others
    # then find the schema at head (without the lock, one would fail on "relation exists").
    await asyncio.gather(*(upgrade_database(database_url) for _ in range(4)))

    assert await current_revision(database_url) == head_revision()


async def test_plain_postgresql_url_is_accepted(database_url: str) -> None:
    plain = database_url.replace("postgresql+asyncpg://", "postgresql://", 1)

    await upgrade_database(plain)

    assert await current_revision(plain) == head_revision()


def _diff_against_models(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection,
        opts={
            "include_schemas": True,
            "include_name": lambda name, type_, _: type_ != "schema" or name == SCHEMA,
            "version_table_schema": SCHEMA,
        },
    )
    return list(compare_metadata(context, metadata))


async def test_migrated_schema_matches_the_table_definitions(database_url: str) -> None:
    # The queries are written against coordinator.store.schema, the database is built by the
    # hand-written migration: autogenerate must see nothing to do between the two.
    await upgrade_database(database_url)
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            diff = await conn.run_sync(_diff_against_models)
    finally:
        await engine.dispose()

    assert diff == []


def _downgrade_to_base(connection: Connection) -> None:
    command.downgrade(alembic_config(connection), "base")


async def test_downgrade_to_base_and_upgrade_again(database_url: str) -> None:
    await upgrade_database(database_url)
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_downgrade_to_base)
    finally:
        await engine.dispose()

    assert await current_revision(database_url) is None
    assert await _tables(database_url) == {"alembic_version"}

    await upgrade_database(database_url)

    assert await _tables(database_url) == TABLES
