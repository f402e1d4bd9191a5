"""The coordinator's connection pool to PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

__all__ = ["create_engine"]


def _json_dumps(value: Any) -> str:
    # NaN and Infinity are not JSON and PostgreSQL's jsonb rejects them; fail here, with a
    # Python traceback pointing at the value, rather than in the server.
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def create_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    """An asyncpg engine for ``url``.

    A plain ``postgresql://`` URL is given the asyncpg driver, so operators can paste the URL
    they use with psql.

    Connections are not pinged when checked out (a round trip per transaction, ~1 in 10 of the
    coordinator's): after a database restart the first statement on a stale connection fails
    with a disconnect, SQLAlchemy discards that connection and every pooled one older than it,
    and the caller's transient-error retry runs the batch again on a fresh connection.
    """
    sa_url = make_url(url)
    if sa_url.drivername in ("postgresql", "postgres"):
        sa_url = sa_url.set(drivername="postgresql+asyncpg")
    return create_async_engine(
        sa_url,
        pool_size=pool_size,
        max_overflow=pool_size,
        # Errors quote the statement, never its arguments: those are saga data.
        hide_parameters=True,
        json_serializer=_json_dumps,
        json_deserializer=json.loads,
        connect_args={"server_settings": {"application_name": "saga-coordinator"}},
    )
