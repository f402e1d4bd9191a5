"""Saga shapes (issue 14): what a saga awaits (several at once in a parallel group), its stage,
skipped steps, signals kept for a wait ahead, and the link from a child saga to its parent.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01

Written by hand and frozen: it does not import ``coordinator.store.schema``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "saga"


def upgrade() -> None:
    # Rows written before: an empty ``awaiting`` means "the scalar columns describe the one
    # command awaited" (SagaInstance derives the entry), so no row has to be rewritten here.
    op.add_column(
        "saga_instance",
        sa.Column("awaiting", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        schema=SCHEMA,
    )
    op.add_column(
        "saga_instance",
        sa.Column("stage", sa.Integer, nullable=False, server_default=sa.text("0")),
        schema=SCHEMA,
    )
    # A straight line of steps stands at the step after the completed ones.
    op.execute(f"UPDATE {SCHEMA}.saga_instance SET stage = cardinality(completed_steps)")
    op.add_column(
        "saga_instance",
        sa.Column(
            "skipped_steps",
            ARRAY(sa.Text),
            nullable=False,
            server_default=sa.text("'{}'::text[]"),
        ),
        schema=SCHEMA,
    )
    op.add_column(
        "saga_instance",
        sa.Column("pending_signals", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        schema=SCHEMA,
    )
    op.add_column("saga_instance", sa.Column("parent_saga_id", sa.Text), schema=SCHEMA)
    op.add_column("saga_instance", sa.Column("parent_step", sa.Text), schema=SCHEMA)
    # The children of a saga are found by their parent; most sagas have none.
    op.create_index(
        "ix_saga_instance_parent_saga_id",
        "saga_instance",
        ["parent_saga_id"],
        schema=SCHEMA,
        postgresql_where=sa.text("parent_saga_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_saga_instance_parent_saga_id", table_name="saga_instance", schema=SCHEMA)
    for column in (
        "parent_step",
        "parent_saga_id",
        "pending_signals",
        "skipped_steps",
        "stage",
        "awaiting",
    ):
        op.drop_column("saga_instance", column, schema=SCHEMA)
