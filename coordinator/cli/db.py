"""``saga db``: the coordinator's schema (Alembic migrations)."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from coordinator.cli.common import settings_from
from coordinator.cli.options import DatabaseOpt

__all__ = ["db_app"]

db_app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade(
    database_url: DatabaseOpt = None,
    revision: Annotated[str, typer.Option(help="Target revision")] = "head",
) -> None:
    """Migrate the coordinator's schema to the latest (or given) revision."""
    from coordinator.store.migrate import upgrade_database

    settings = settings_from(database_url=database_url)
    asyncio.run(upgrade_database(settings.database.url, revision))
    typer.echo(f"database at {revision}")
