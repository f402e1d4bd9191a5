"""Alembic environment for the coordinator's schema.

Normally run through :func:`coordinator.store.migrate.upgrade_database`, which hands over an open
connection in ``config.attributes["connection"]`` (already inside a transaction holding the
migration lock). Given only ``sqlalchemy.url`` instead, it opens its own asyncpg connection, so
``alembic`` pointed at this folder works too, including offline ``--sql`` mode.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import pool, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from coordinator.store.schema import SCHEMA, metadata

config = context.config


def _include_name(name: str | None, type_: str, parent_names: object) -> bool:
    # Autogenerate compares only our schema; other applications may share the database.
    if type_ == "schema":
        return name == SCHEMA
    return True


_CONFIGURE_OPTIONS: dict[str, object] = {
    "target_metadata": metadata,
    "version_table_schema": SCHEMA,
    "include_schemas": True,
    "include_name": _include_name,
}


def _ensure_schema(connection: Connection) -> None:
    # The version table lives in our schema, so the schema must exist before Alembic looks for
    # it. Checked first because CREATE SCHEMA IF NOT EXISTS still needs the CREATE privilege.
    exists = connection.execute(
        text("SELECT 1 FROM pg_namespace WHERE nspname = :name"), {"name": SCHEMA}
    ).scalar()
    if exists is None:
        connection.execute(text(f'CREATE SCHEMA "{SCHEMA}"'))


def _run_on(connection: Connection) -> None:
    _ensure_schema(connection)
    context.configure(connection=connection, **_CONFIGURE_OPTIONS)  # type: ignore[arg-type]
    with context.begin_transaction():
        context.run_migrations()


async def _run_with_own_engine(url: str) -> None:
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_run_on)
    finally:
        await engine.dispose()


def _run_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **_CONFIGURE_OPTIONS,  # type: ignore[arg-type]
    )
    with context.begin_transaction():
        context.execute(f'CREATE SCHEMA IF NOT EXISTS "{SCHEMA}"')
        context.run_migrations()


if context.is_offline_mode():
    _run_offline()
elif (given := config.attributes.get("connection")) is not None:
    _run_on(given)
else:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("set sqlalchemy.url or pass a connection in config.attributes")
    asyncio.run(_run_with_own_engine(url))
