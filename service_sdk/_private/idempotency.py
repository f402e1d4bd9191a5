"""The processed-commands record in the service's own PostgreSQL schema.

One row per command id: ``done`` with the recorded reply (a redelivered or re-sent command is
answered from it, the handler does not run again) or ``pending`` for a deferred command (the
row keeps the command's envelope so the service can answer it later). A retryable rejection
leaves no row, so a re-send runs the handler again.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    Column,
    DateTime,
    MetaData,
    Table,
    Text,
    delete,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.schema import CreateSchema, CreateTable

from service_sdk.contract.envelope import Envelope

__all__ = ["CommandStatus", "ProcessedCommand", "ProcessedCommands"]

TABLE_NAME = "saga_processed_commands"


class CommandStatus(StrEnum):
    """The status column."""

    DONE = "done"
    PENDING = "pending"


@dataclass(frozen=True)
class ProcessedCommand:
    """One row of the record.

    Attributes:
        command_id: The command's id.
        status: Done (answered) or pending (deferred).
        command: The command's envelope as received.
        reply: The recorded reply, for done commands.
    """

    command_id: str
    status: CommandStatus
    command: Envelope
    reply: Envelope | None


class ProcessedCommands:
    """The ``<schema>.saga_processed_commands`` table of one service.

    Args:
        schema: The service's PostgreSQL schema (validated by ``Service``).
    """

    def __init__(self, schema: str) -> None:
        self.schema = schema
        self.table = Table(
            TABLE_NAME,
            MetaData(schema=schema),
            Column("command_id", Text, primary_key=True),
            Column("message_type", Text, nullable=False),
            Column("status", Text, nullable=False),
            Column("saga_id", Text, nullable=False),
            Column("command", JSONB, nullable=False),
            Column("reply", JSONB, nullable=True),
            Column(
                "created_at", DateTime(timezone=True), nullable=False, server_default=func.now()
            ),
            Column(
                "updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()
            ),
            CheckConstraint("status IN ('done', 'pending')", name=f"{TABLE_NAME}_status_check"),
        )

    async def install(self, conn: AsyncConnection) -> None:
        """Create the schema and the table if they do not exist."""
        # Two instances starting together would race on CREATE SCHEMA IF NOT EXISTS (it can
        # still fail with a unique violation); the advisory lock serialises them.
        await conn.execute(
            text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
            {"key": f"service_sdk.install.{self.schema}"},
        )
        await conn.execute(CreateSchema(self.schema, if_not_exists=True))
        await conn.execute(CreateTable(self.table, if_not_exists=True))

    async def insert_claim(self, conn: AsyncConnection, command: Envelope) -> bool:
        """Claim a command id for this transaction as ``pending``; False if already recorded.

        The row is invisible to others until commit; the caller turns it into ``done``,
        leaves it ``pending`` (deferred) or deletes it (retryable rejection).
        """
        # ON CONFLICT DO NOTHING: during a rebalance two instances may handle the same command;
        # the second blocks on the primary key until the first commits, then finds the row
        # and answers from it instead of running the handler a second time.
        statement = (
            insert(self.table)
            .values(
                command_id=command.command_id,
                message_type=command.message_type,
                status=CommandStatus.PENDING.value,
                saga_id=command.saga_id,
                command=command.model_dump(mode="json"),
                reply=None,
            )
            .on_conflict_do_nothing(index_elements=["command_id"])
            .returning(self.table.c.command_id)
        )
        return (await conn.execute(statement)).first() is not None

    async def select_for_update(
        self, conn: AsyncConnection, command_id: str
    ) -> ProcessedCommand | None:
        """The row of ``command_id``, locked until the transaction ends."""
        c = self.table.c
        statement = (
            select(c.command_id, c.status, c.command, c.reply)
            .where(c.command_id == command_id)
            .with_for_update()
        )
        row = (await conn.execute(statement)).first()
        if row is None:
            return None
        return ProcessedCommand(
            command_id=row.command_id,
            status=CommandStatus(row.status),
            command=Envelope.model_validate(row.command),
            reply=None if row.reply is None else Envelope.model_validate(row.reply),
        )

    async def update_done(self, conn: AsyncConnection, command_id: str, reply: Envelope) -> None:
        """Record the reply of a claimed or pending command."""
        values: dict[str, Any] = {
            "status": CommandStatus.DONE.value,
            "reply": reply.model_dump(mode="json"),
            "updated_at": func.now(),
        }
        await conn.execute(
            update(self.table).where(self.table.c.command_id == command_id).values(**values)
        )

    async def delete(self, conn: AsyncConnection, command_id: str) -> None:
        """Forget a command, so that a re-send runs its handler again."""
        await conn.execute(delete(self.table).where(self.table.c.command_id == command_id))
