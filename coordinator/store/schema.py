"""The coordinator's PostgreSQL tables, as SQLAlchemy Core.

Everything lives in one PostgreSQL schema, :data:`SCHEMA`, so the coordinator can share a
database with other applications. The tables are created by the Alembic migrations in
``coordinator/migrations`` (never by ``metadata.create_all``); this module is what the queries in
:mod:`coordinator.store.saga_store` are written against, and the two must agree.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, BYTEA, JSONB

from coordinator.core.state import SagaStatus

__all__ = [
    "ACTIVE_DEADLINE_PREDICATE",
    "ACTIVE_STATUSES",
    "QUEUED_PREDICATE",
    "SCHEMA",
    "dead_letter_replay",
    "inbox",
    "metadata",
    "outbox",
    "parked_reply",
    "participant_heartbeat",
    "saga_history",
    "saga_instance",
    "saga_schedule",
    "saga_schedule_tick",
]

SCHEMA = "saga"

ACTIVE_STATUSES = (SagaStatus.RUNNING, SagaStatus.COMPENSATING)
"""Statuses in which a saga awaits a reply and so may have a deadline."""

metadata = sa.MetaData(
    schema=SCHEMA,
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    },
)


def _timestamp(name: str, *, nullable: bool = False) -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _sql_in(column: str, values: tuple[SagaStatus, ...]) -> str:
    # Literal values, not bind parameters: the planner can match a partial index only against
    # a predicate it can prove from the query text, and prepared statements hide parameters.
    return f"{column} IN ({', '.join(repr(str(v)) for v in values)})"


ACTIVE_DEADLINE_PREDICATE = f"{_sql_in('status', ACTIVE_STATUSES)} AND deadline_at IS NOT NULL"
"""The partial index predicate of the deadline scanner's index (repeated in its query)."""

QUEUED_PREDICATE = _sql_in("status", (SagaStatus.QUEUED,))
"""The partial index predicate of the admission queue (repeated in its query)."""

saga_instance = sa.Table(
    "saga_instance",
    metadata,
    sa.Column("saga_id", sa.Text, primary_key=True),
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
    sa.Column("epoch", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("service", sa.Text),
    _timestamp("picked_up_at", nullable=True),
    sa.Column("in_doubt_step", sa.Text),
    sa.Column("in_doubt_command_id", sa.Text),
    _timestamp("created_at"),
    _timestamp("updated_at"),
    _timestamp("completed_at", nullable=True),
    # ``name=value`` of the definition's search_keys at start (coordinator.core.business_keys).
    sa.Column(
        "business_keys",
        ARRAY(sa.Text),
        nullable=False,
        server_default=sa.text("'{}'::text[]"),
    ),
    # Everything the saga awaits (several inside a parallel group); see coordinator.store.awaiting.
    sa.Column("awaiting", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
    sa.Column("stage", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column(
        "skipped_steps", ARRAY(sa.Text), nullable=False, server_default=sa.text("'{}'::text[]")
    ),
    sa.Column("pending_signals", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
    sa.Column("parent_saga_id", sa.Text),
    sa.Column("parent_step", sa.Text),
    sa.CheckConstraint(_sql_in("status", tuple(SagaStatus)), name="status"),
    sa.Index(None, "status", "saga_type"),
    sa.Index("ix_saga_instance_business_keys", "business_keys", postgresql_using="gin"),
    sa.Index("ix_saga_instance_created_at", "created_at", "saga_id"),
    sa.Index(
        "ix_saga_instance_failure_reason",
        "created_at",
        postgresql_where=sa.text("failure_reason IS NOT NULL"),
    ),
    sa.Index(
        "ix_saga_instance_completed_at",
        "completed_at",
        postgresql_where=sa.text("completed_at IS NOT NULL"),
    ),
    sa.Index(
        "ix_saga_instance_due_deadline",
        "deadline_at",
        postgresql_where=sa.text(ACTIVE_DEADLINE_PREDICATE),
    ),
    sa.Index(
        "ix_saga_instance_parent_saga_id",
        "parent_saga_id",
        postgresql_where=sa.text("parent_saga_id IS NOT NULL"),
    ),
    sa.Index(
        "ix_saga_instance_queued",
        "created_at",
        "saga_id",
        postgresql_where=sa.text(QUEUED_PREDICATE),
    ),
)

participant_heartbeat = sa.Table(
    "participant_heartbeat",
    metadata,
    # One row per participant instance; the coordinator's clock stamps last_seen, so clock skew
    # between hosts does not decide whether a service is alive.
    sa.Column("service", sa.Text, primary_key=True),
    sa.Column("instance", sa.Text, primary_key=True),
    _timestamp("last_seen"),
)

saga_history = sa.Table(
    "saga_history",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column(
        "saga_id",
        sa.Text,
        sa.ForeignKey(saga_instance.c.saga_id, ondelete="CASCADE"),
        nullable=False,
    ),
    _timestamp("at"),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("step", sa.Text),
    sa.Column("message_id", sa.Text),
    sa.Column("detail", JSONB, nullable=False),
    sa.Index(None, "saga_id", "id"),
)

inbox = sa.Table(
    "inbox",
    metadata,
    sa.Column("message_id", sa.Text, primary_key=True),
    sa.Column("saga_id", sa.Text),
    _timestamp("processed_at"),
    sa.Index("ix_inbox_processed_at", "processed_at"),
)

outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("saga_id", sa.Text, nullable=False),
    sa.Column("topic", sa.Text, nullable=False),
    sa.Column("key", BYTEA, nullable=False),
    sa.Column("value", BYTEA, nullable=False),
    sa.Column("headers", JSONB, nullable=False),
    sa.Column("message_id", sa.Text, nullable=False),
    _timestamp("created_at"),
    _timestamp("sent_at", nullable=True),
    sa.Index("ix_outbox_unsent", "id", postgresql_where=sa.text("sent_at IS NULL")),
    sa.Index("ix_outbox_sent_at", "sent_at", postgresql_where=sa.text("sent_at IS NOT NULL")),
)

dead_letter_replay = sa.Table(
    "dead_letter_replay",
    metadata,
    # A dead letter is its position in its dead-letter topic; one row per dead letter
    # replayed, inserted before the send, so none is replayed twice.
    sa.Column("dlq_topic", sa.Text, primary_key=True),
    sa.Column("dlq_partition", sa.Integer, primary_key=True),
    sa.Column("dlq_offset", sa.BigInteger, primary_key=True),
    _timestamp("replayed_at"),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("original_topic", sa.Text, nullable=False),
)

parked_reply = sa.Table(
    "parked_reply",
    metadata,
    # A reply for a saga whose definition version the receiving coordinator does not have,
    # kept (not acknowledged and dropped) until a coordinator that has the version applies it.
    # No inbox row is written when parking: the resuming coordinator's inbox de-duplicates.
    sa.Column("message_id", sa.Text, primary_key=True),
    sa.Column("seq", sa.BigInteger, sa.Identity(), nullable=False),
    sa.Column("saga_id", sa.Text, nullable=False),
    sa.Column("saga_type", sa.Text, nullable=False),
    sa.Column("definition_version", sa.Integer, nullable=False),
    sa.Column("body", BYTEA, nullable=False),
    sa.Column("parked_by", sa.Text, nullable=False),
    _timestamp("parked_at"),
    sa.Index(None, "saga_type", "definition_version", "seq"),
    sa.Index(None, "saga_id"),
)

saga_schedule = sa.Table(
    "saga_schedule",
    metadata,
    # One row per schedule any coordinator declared (coordinator.core.schedule); written by
    # each coordinator at start, locked FOR UPDATE SKIP LOCKED by the one firing its ticks.
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("saga_type", sa.Text, nullable=False),
    sa.Column("cron", sa.Text, nullable=False),
    sa.Column("catch_up", sa.Text, nullable=False),
    sa.Column("source", sa.Text, nullable=False),
    # Ticks at or before the cursor are handled (fired or skipped).
    _timestamp("cursor_at"),
    _timestamp("last_tick_at", nullable=True),
    sa.Column("last_saga_id", sa.Text),
    _timestamp("last_fired_at", nullable=True),
    sa.Column("paused", sa.Boolean, nullable=False, server_default=sa.false()),
    _timestamp("paused_at", nullable=True),
    sa.Column("paused_by", sa.Text),
    sa.Column("pause_reason", sa.Text),
    _timestamp("declared_at"),
    sa.CheckConstraint("catch_up IN ('skip', 'latest', 'all')", name="catch_up"),
)

saga_schedule_tick = sa.Table(
    "saga_schedule_tick",
    metadata,
    # One row per fired tick: the primary key is what makes a tick fire once, however many
    # coordinators race for it (INSERT ... ON CONFLICT DO NOTHING in the start's transaction).
    sa.Column(
        "schedule",
        sa.Text,
        sa.ForeignKey(saga_schedule.c.name, ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("tick_at", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("saga_id", sa.Text, nullable=False),
    sa.Column("outcome", sa.Text, nullable=False),
    sa.Column("error", sa.Text),
    _timestamp("fired_at"),
    sa.Index(None, "fired_at"),
)
