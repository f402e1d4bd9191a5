"""Indexes for housekeeping: find sent outbox rows and aged inbox entries without a scan.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22

Written by hand and frozen: it does not import ``coordinator.store.schema``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "saga"


def upgrade() -> None:
    op.create_index("ix_inbox_processed_at", "inbox", ["processed_at"], schema=SCHEMA)
    op.create_index(
        "ix_outbox_sent_at",
        "outbox",
        ["sent_at"],
        schema=SCHEMA,
        postgresql_where=sa.text("sent_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_sent_at", table_name="outbox", schema=SCHEMA)
    op.drop_index("ix_inbox_processed_at", table_name="inbox", schema=SCHEMA)
