"""Running the schema migrations from Python (the CLI's ``saga db upgrade`` calls this).

The Alembic environment ships inside the package (``coordinator/migrations``) and its
configuration is built here in code, so no ``alembic.ini`` is needed::

    await upgrade_database("postgresql+asyncpg://saga@db/saga")
    await current_revision("postgresql+asyncpg://saga@db/saga")  # "0001"
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection

from coordinator.store.database import create_engine
from coordinator.store.schema import SCHEMA

__all__ = ["alembic_config", "current_revision", "head_revision", "upgrade_database"]

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

# Any fixed 64-bit number, the same in every coordinator: instances starting together run the
# migrations one after the other; the later ones then find nothing left to do.
_MIGRATION_LOCK_KEY = 0x5A6A_C00D_0001


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic configuration for the packaged migrations.

    Args:
        connection: A synchronous connection (from ``AsyncConnection.run_sync``) for the
            migrations to run on; without one, set ``sqlalchemy.url`` on the result.
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision the packaged migrations define."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations found in {MIGRATIONS_DIR}")
    return head


async def upgrade_database(url: str, revision: str = "head") -> None:
    """Migrate the database at ``url`` to ``revision``; a no-op when it is already there.

    All revisions run in one transaction (PostgreSQL has transactional DDL), under an advisory
    lock, so a failed or concurrent upgrade never leaves a half-migrated schema.
    """
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
            )
            await conn.run_sync(_upgrade, revision)
    finally:
        await engine.dispose()


def _upgrade(connection: Connection, revision: str) -> None:
    command.upgrade(alembic_config(connection), revision)


async def current_revision(url: str) -> str | None:
    """The revision the database at ``url`` is at; None before the first migration."""
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(_current_revision)
    finally:
        await engine.dispose()


def _current_revision(connection: Connection) -> str | None:
    context = MigrationContext.configure(connection, opts={"version_table_schema": SCHEMA})
    return context.get_current_revision()
