"""Talking to a PostgreSQL server as an administrator: URLs, readiness, databases."""

from __future__ import annotations

import asyncio
import re
import time
from typing import TYPE_CHECKING

import asyncpg
from sqlalchemy.engine import make_url

from coordinator.devstack.errors import DevStackError

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "asyncpg_dsn",
    "create_database",
    "database_url",
    "drop_database",
    "server_version",
    "sqlalchemy_url",
    "wait_for_postgres",
]

_SAFE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def sqlalchemy_url(url: str) -> str:
    """The same URL with the ``postgresql+asyncpg`` driver (accepts ``postgres://`` too)."""
    parsed = make_url(url.replace("postgres://", "postgresql://", 1))
    return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def asyncpg_dsn(url: str) -> str:
    """A ``postgresql://`` DSN for asyncpg from a SQLAlchemy URL."""
    parsed = make_url(sqlalchemy_url(url))
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def database_url(server_url: str, name: str) -> str:
    """The URL of database ``name`` on the server of ``server_url``."""
    return (
        make_url(sqlalchemy_url(server_url))
        .set(database=name)
        .render_as_string(hide_password=False)
    )


def _checked_name(name: str) -> str:
    # Database names cannot be bound parameters; accept only plain identifiers.
    if not _SAFE_NAME.match(name):
        raise ValueError(f"not a plain lower-case identifier: {name!r}")
    return name


async def server_version(url: str) -> str:
    """``SHOW server_version``, e.g. ``"18.6"``."""
    connection = await asyncpg.connect(asyncpg_dsn(url), timeout=10)
    try:
        return str(await connection.fetchval("SHOW server_version"))
    finally:
        await connection.close()


async def wait_for_postgres(
    url: str, *, max_wait: float = 30.0, is_alive: Callable[[], bool] | None = None
) -> str:
    """Poll until the server accepts a connection; return its version.

    Raises:
        TimeoutError: no connection within ``max_wait`` seconds.
        DevStackError: ``is_alive`` reports that the server process has exited.
    """
    deadline = time.monotonic() + max_wait
    while True:
        if is_alive is not None and not is_alive():
            raise DevStackError("the PostgreSQL server exited while starting")
        try:
            return await server_version(url)
        except (OSError, asyncpg.PostgresError, TimeoutError) as error:
            # CannotConnectNow ("the database system is starting up") is a PostgresError.
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"PostgreSQL not ready within {max_wait:.0f} s: {error!r}"
                ) from error
        await asyncio.sleep(0.1)


async def create_database(server_url: str, name: str) -> str:
    """``CREATE DATABASE name``; return its URL."""
    connection = await asyncpg.connect(asyncpg_dsn(server_url), timeout=10)
    try:
        await connection.execute(f'CREATE DATABASE "{_checked_name(name)}"')
    finally:
        await connection.close()
    return database_url(server_url, name)


async def drop_database(server_url: str, name: str) -> None:
    """Drop the database, disconnecting whoever is still connected (idempotent)."""
    connection = await asyncpg.connect(asyncpg_dsn(server_url), timeout=10)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{_checked_name(name)}" WITH (FORCE)')
    finally:
        await connection.close()
