"""Parked replies: replies for sagas whose definition version this coordinator lacks.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

Written by hand and frozen: it does not import ``coordinator.store.schema``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import BYTEA

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "saga"


def upgrade() -> None:
    op.create_table(
        "parked_reply",
        sa.Column("message_id", sa.Text, primary_key=True),
        sa.Column("seq", sa.BigInteger, sa.Identity(), nullable=False),
        sa.Column("saga_id", sa.Text, nullable=False),
        sa.Column("saga_type", sa.Text, nullable=False),
        sa.Column("definition_version", sa.Integer, nullable=False),
        sa.Column("body", BYTEA, nullable=False),
        sa.Column("parked_by", sa.Text, nullable=False),
        sa.Column("parked_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("message_id", name="pk_parked_reply"),
        schema=SCHEMA,
    )
    # A coordinator resumes the replies of the versions it has, oldest first.
    op.create_index(
        "ix_parked_reply_saga_type_definition_version_seq",
        "parked_reply",
        ["saga_type", "definition_version", "seq"],
        schema=SCHEMA,
    )
    op.create_index("ix_parked_reply_saga_id", "parked_reply", ["saga_id"], schema=SCHEMA)


def downgrade() -> None:
    op.drop_table("parked_reply", schema=SCHEMA)
