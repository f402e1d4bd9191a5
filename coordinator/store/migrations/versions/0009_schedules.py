"""Scheduled sagas: the schedules coordinators declared, and the ticks they fired.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01

Written by hand and frozen: it does not import ``coordinator.store.schema``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "saga"


def _at(name: str, *, nullable: bool = False) -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "saga_schedule",
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("saga_type", sa.Text, nullable=False),
        sa.Column("cron", sa.Text, nullable=False),
        sa.Column("catch_up", sa.Text, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        _at("cursor_at"),
        _at("last_tick_at", nullable=True),
        sa.Column("last_saga_id", sa.Text, nullable=True),
        _at("last_fired_at", nullable=True),
        sa.Column("paused", sa.Boolean, nullable=False, server_default=sa.false()),
        _at("paused_at", nullable=True),
        sa.Column("paused_by", sa.Text, nullable=True),
        sa.Column("pause_reason", sa.Text, nullable=True),
        _at("declared_at"),
        sa.PrimaryKeyConstraint("name", name="pk_saga_schedule"),
        sa.CheckConstraint(
            "catch_up IN ('skip', 'latest', 'all')", name="ck_saga_schedule_catch_up"
        ),
        schema=SCHEMA,
    )
    # The primary key fires each tick once, however many coordinators race for it.
    op.create_table(
        "saga_schedule_tick",
        sa.Column("schedule", sa.Text, nullable=False),
        _at("tick_at"),
        sa.Column("saga_id", sa.Text, nullable=False),
        sa.Column("outcome", sa.Text, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        _at("fired_at"),
        sa.PrimaryKeyConstraint("schedule", "tick_at", name="pk_saga_schedule_tick"),
        sa.ForeignKeyConstraint(
            ["schedule"],
            [f"{SCHEMA}.saga_schedule.name"],
            name="fk_saga_schedule_tick_schedule_saga_schedule",
            ondelete="CASCADE",
        ),
        schema=SCHEMA,
    )
    # Old ticks are deleted by age.
    op.create_index(
        "ix_saga_schedule_tick_fired_at", "saga_schedule_tick", ["fired_at"], schema=SCHEMA
    )


def downgrade() -> None:
    op.drop_index("ix_saga_schedule_tick_fired_at", table_name="saga_schedule_tick", schema=SCHEMA)
    op.drop_table("saga_schedule_tick", schema=SCHEMA)
    op.drop_table("saga_schedule", schema=SCHEMA)
