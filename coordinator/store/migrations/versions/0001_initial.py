"""Initial schema: saga instances, their history, the inbox and the outbox.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

Written by hand and frozen: later changes go in new revisions, never here. It does not import
``coordinator.store.schema``, whose tables describe the newest revision, not this one.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, BYTEA, JSONB

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "saga"


def _timestamp(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "saga_instance",
        sa.Column("saga_id", sa.Text, nullable=False),
        sa.Column("saga_type", sa.Text, nullable=False),
        sa.Column("definition_version", sa.Integer, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("current_step", sa.Text),
        sa.Column("command_id", sa.Text),
        sa.Column("attempt", sa.Integer, nullable=False),
        _timestamp("deadline_at", nullable=True),
        sa.Column("completed_steps", ARRAY(sa.Text), nullable=False),
        sa.Column("compensated_steps", ARRAY(sa.Text), nullable=False),
        sa.Column("data", JSONB, nullable=False),
        sa.Column("failure_reason", sa.Text),
        sa.Column("traceparent", sa.Text),
        sa.Column("version", sa.Integer, nullable=False),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        _timestamp("completed_at", nullable=True),
        sa.PrimaryKeyConstraint("saga_id", name="pk_saga_instance"),
        sa.CheckConstraint(
            "status IN ('RUNNING', 'COMPENSATING', 'COMPLETED', 'COMPENSATED', 'FAILED')",
            name="ck_saga_instance_status",
        ),
        schema=SCHEMA,
    )
    # The operators' list and the per-status gauges filter by status and type.
    op.create_index(
        "ix_saga_instance_status_saga_type",
        "saga_instance",
        ["status", "saga_type"],
        schema=SCHEMA,
    )
    # The deadline scanner's query; only sagas awaiting a reply can be overdue, a small
    # fraction of all rows once most sagas have finished.
    op.create_index(
        "ix_saga_instance_due_deadline",
        "saga_instance",
        ["deadline_at"],
        schema=SCHEMA,
        postgresql_where=sa.text(
            "status IN ('RUNNING', 'COMPENSATING') AND deadline_at IS NOT NULL"
        ),
    )

    op.create_table(
        "saga_history",
        sa.Column("id", sa.BigInteger, sa.Identity(), nullable=False),
        sa.Column("saga_id", sa.Text, nullable=False),
        _timestamp("at"),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("step", sa.Text),
        sa.Column("message_id", sa.Text),
        sa.Column("detail", JSONB, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_saga_history"),
        sa.ForeignKeyConstraint(
            ["saga_id"],
            [f"{SCHEMA}.saga_instance.saga_id"],
            name="fk_saga_history_saga_id_saga_instance",
            ondelete="CASCADE",
        ),
        schema=SCHEMA,
    )
    # One saga's timeline, in order.
    op.create_index("ix_saga_history_saga_id_id", "saga_history", ["saga_id", "id"], schema=SCHEMA)

    # Message ids already processed (replies, start requests): a redelivery changes nothing.
    op.create_table(
        "inbox",
        sa.Column("message_id", sa.Text, nullable=False),
        sa.Column("saga_id", sa.Text),
        _timestamp("processed_at"),
        sa.PrimaryKeyConstraint("message_id", name="pk_inbox"),
        schema=SCHEMA,
    )

    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger, sa.Identity(), nullable=False),
        sa.Column("saga_id", sa.Text, nullable=False),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("key", BYTEA, nullable=False),
        sa.Column("value", BYTEA, nullable=False),
        sa.Column("headers", JSONB, nullable=False),
        sa.Column("message_id", sa.Text, nullable=False),
        _timestamp("created_at"),
        _timestamp("sent_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
        schema=SCHEMA,
    )
    # The relay's sweep reads unsent rows in id order; sent rows wait only for housekeeping.
    op.create_index(
        "ix_outbox_unsent",
        "outbox",
        ["id"],
        schema=SCHEMA,
        postgresql_where=sa.text("sent_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_table("outbox", schema=SCHEMA)
    op.drop_table("inbox", schema=SCHEMA)
    op.drop_table("saga_history", schema=SCHEMA)
    op.drop_table("saga_instance", schema=SCHEMA)
