"""Settling and admission: QUEUED sagas, the awaited command's service and pickup, steps in
doubt, and participant heartbeats.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

Written by hand and frozen: it does not import ``coordinator.store.schema``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "saga"
_STATUSES_BEFORE = "'RUNNING', 'COMPENSATING', 'COMPLETED', 'COMPENSATED', 'FAILED'"
_STATUSES = "'QUEUED', " + _STATUSES_BEFORE


def upgrade() -> None:
    op.drop_constraint("ck_saga_instance_status", "saga_instance", schema=SCHEMA, type_="check")
    op.create_check_constraint(
        "ck_saga_instance_status", "saga_instance", f"status IN ({_STATUSES})", schema=SCHEMA
    )
    op.add_column("saga_instance", sa.Column("service", sa.Text), schema=SCHEMA)
    op.add_column(
        "saga_instance", sa.Column("picked_up_at", sa.DateTime(timezone=True)), schema=SCHEMA
    )
    op.add_column("saga_instance", sa.Column("in_doubt_step", sa.Text), schema=SCHEMA)
    op.add_column("saga_instance", sa.Column("in_doubt_command_id", sa.Text), schema=SCHEMA)
    # Admission takes the oldest QUEUED sagas first.
    op.create_index(
        "ix_saga_instance_queued",
        "saga_instance",
        ["created_at", "saga_id"],
        schema=SCHEMA,
        postgresql_where=sa.text("status IN ('QUEUED')"),
    )
    op.create_table(
        "participant_heartbeat",
        sa.Column("service", sa.Text, primary_key=True),
        sa.Column("instance", sa.Text, primary_key=True),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_table("participant_heartbeat", schema=SCHEMA)
    op.drop_index("ix_saga_instance_queued", table_name="saga_instance", schema=SCHEMA)
    for column in ("in_doubt_command_id", "in_doubt_step", "picked_up_at", "service"):
        op.drop_column("saga_instance", column, schema=SCHEMA)
    op.drop_constraint("ck_saga_instance_status", "saga_instance", schema=SCHEMA, type_="check")
    op.create_check_constraint(
        "ck_saga_instance_status",
        "saga_instance",
        f"status IN ({_STATUSES_BEFORE})",
        schema=SCHEMA,
    )
