"""Dead-letter replays: one row per dead letter sent back to its topic, so none goes twice.

Revision ID: 0003
Revises: 0002
Create Date: 2025-01-03

Written by hand and frozen, like 0001: it does not import ``coordinator.store.schema``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "saga"


def upgrade() -> None:
    op.create_table(
        "dead_letter_replay",
        sa.Column("dlq_topic", sa.Text, nullable=False),
        sa.Column("dlq_partition", sa.Integer, nullable=False),
        sa.Column("dlq_offset", sa.BigInteger, nullable=False),
        sa.Column("replayed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("original_topic", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint(
            "dlq_topic", "dlq_partition", "dlq_offset", name="pk_dead_letter_replay"
        ),
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_table("dead_letter_replay", schema=SCHEMA)
