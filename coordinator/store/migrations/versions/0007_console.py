"""The console: business keys, newest-first listing, and retention of finished sagas.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01

Written by hand and frozen: it does not import ``coordinator.store.schema``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "saga"


def upgrade() -> None:
    op.add_column(
        "saga_instance",
        sa.Column(
            "business_keys",
            ARRAY(sa.Text),
            nullable=False,
            server_default=sa.text("'{}'::text[]"),
        ),
        schema=SCHEMA,
    )
    # GIN: `business_keys @> ARRAY['order_id=A-17']` finds a saga among millions.
    op.create_index(
        "ix_saga_instance_business_keys",
        "saga_instance",
        ["business_keys"],
        schema=SCHEMA,
        postgresql_using="gin",
    )
    # The console and `saga list` show the newest sagas first, a page at a time.
    op.create_index(
        "ix_saga_instance_created_at", "saga_instance", ["created_at", "saga_id"], schema=SCHEMA
    )
    # A search by failure reason reads only the sagas that have one (a small minority).
    op.create_index(
        "ix_saga_instance_failure_reason",
        "saga_instance",
        ["created_at"],
        schema=SCHEMA,
        postgresql_where=sa.text("failure_reason IS NOT NULL"),
    )
    # Retention deletes the oldest finished sagas first; running ones have no completed_at.
    op.create_index(
        "ix_saga_instance_completed_at",
        "saga_instance",
        ["completed_at"],
        schema=SCHEMA,
        postgresql_where=sa.text("completed_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_saga_instance_completed_at", table_name="saga_instance", schema=SCHEMA)
    op.drop_index("ix_saga_instance_failure_reason", table_name="saga_instance", schema=SCHEMA)
    op.drop_index("ix_saga_instance_created_at", table_name="saga_instance", schema=SCHEMA)
    op.drop_index("ix_saga_instance_business_keys", table_name="saga_instance", schema=SCHEMA)
    op.drop_column("saga_instance", "business_keys", schema=SCHEMA)
