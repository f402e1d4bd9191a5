"""Saga epoch: bumped on every operator retry so re-sent commands get fresh command ids.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02

Written by hand and frozen, like 0001: it does not import ``coordinator.store.schema``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "saga"


def upgrade() -> None:
    # A constant server default: PostgreSQL adds the column without rewriting the table.
    op.add_column(
        "saga_instance",
        sa.Column("epoch", sa.Integer, nullable=False, server_default=sa.text("0")),
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_column("saga_instance", "epoch", schema=SCHEMA)
