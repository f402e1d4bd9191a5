"""The processed-commands record in the service's own PostgreSQL schema.

One row per command id: ``done`` with the recorded reply (a redelivered or re-sent command is
answered from it, the handler does not run again), ``pending`` for a deferred command (the
row keeps the command's envelope so the service can answer it later), or ``fenced``: a
tombstone, left by an undo (a compensation or a fence naming the command in ``compensates``)
for a command that had not taken effect here. A fenced command is refused for good, its
handler never runs. A tombstone of a command not seen yet holds the undo's envelope and type
until the command itself arrives; then its own envelope and refusal replace them. A retryable
rejection leaves no row, so a re-send runs the handler again.

Tables created by an SDK from before tombstones allow only ``done`` and ``pending``;
:meth:`ProcessedCommands.install` widens their status check once, in place.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
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
    any_,
    bindparam,
    delete,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, insert
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.schema import CreateSchema, CreateTable

from service_sdk.contract.envelope import Envelope

__all__ = ["CommandStatus", "ProcessedCommand", "ProcessedCommands"]

TABLE_NAME = "saga_processed_commands"
_STATUS_CHECK_NAME = f"{TABLE_NAME}_status_check"
_STATUS_CHECK = "status IN ('done', 'pending', 'fenced')"


class CommandStatus(StrEnum):
    """The status column."""

    DONE = "done"
    PENDING = "pending"
    FENCED = "fenced"
    """A tombstone: the saga gave up on the command and undid it; it is refused for good."""


@dataclass(frozen=True)
class ProcessedCommand:
    """One row of the record.

    Attributes:
        command_id: The command's id.
        status: Done (answered), pending (deferred) or fenced (a tombstone).
        command: The command's envelope as received; for a tombstone of a command not seen
            yet, the envelope of the undo that left it.
        reply: The recorded reply, for done commands and tombstones of commands seen here.
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
            CheckConstraint(_STATUS_CHECK, name=_STATUS_CHECK_NAME),
        )

    @property
    def _name(self) -> str:
        # The schema name is validated by Service (lowercase letters, digits, underscores).
        return f'"{self.schema}".{TABLE_NAME}'

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
        await self._widen_status_check(conn)

    async def _widen_status_check(self, conn: AsyncConnection) -> None:
        """Let a table created before tombstones hold ``fenced`` rows (once; a no-op after)."""
        definition = (
            await conn.execute(
                text(
                    "SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c "
                    "JOIN pg_class t ON t.oid = c.conrelid "
                    "JOIN pg_namespace n ON n.oid = t.relnamespace "
                    "WHERE n.nspname = :schema AND t.relname = :table AND c.conname = :name"
                ),
                {"schema": self.schema, "table": TABLE_NAME, "name": _STATUS_CHECK_NAME},
            )
        ).scalar_one_or_none()
        if definition is not None and f"'{CommandStatus.FENCED.value}'" in definition:
            return
        table = self._name
        await conn.execute(
            text(f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {_STATUS_CHECK_NAME}")
        )
        await conn.execute(
            text(f"ALTER TABLE {table} ADD CONSTRAINT {_STATUS_CHECK_NAME} CHECK ({_STATUS_CHECK})")
        )

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

    async def insert_claims(self, conn: AsyncConnection, commands: Sequence[Envelope]) -> set[str]:
        """:meth:`insert_claim` for many commands in one statement; the ids claimed now.

        The statement's text is the same for any number of commands (the rows travel as one
        JSON parameter), so it is prepared once per connection.
        """
        if not commands:
            return set()
        rows = [
            {
                "command_id": command.command_id,
                "message_type": command.message_type,
                "saga_id": command.saga_id,
                "command": command.model_dump(mode="json"),
            }
            for command in commands
        ]
        result = await conn.execute(
            text(
                f"INSERT INTO {self._name} (command_id, message_type, status, saga_id, command) "
                "SELECT r.command_id, r.message_type, :pending, r.saga_id, r.command "
                "FROM jsonb_to_recordset(:rows) "
                "AS r(command_id text, message_type text, saga_id text, command jsonb) "
                "ON CONFLICT (command_id) DO NOTHING RETURNING command_id"
            ).bindparams(bindparam("rows", type_=JSONB)),
            {"rows": rows, "pending": CommandStatus.PENDING.value},
        )
        return set(result.scalars())

    async def update_done_many(
        self, conn: AsyncConnection, replies: Sequence[tuple[str, Envelope]]
    ) -> None:
        """:meth:`update_done` for many commands in one statement."""
        if not replies:
            return
        rows = [
            {"command_id": command_id, "reply": reply.model_dump(mode="json")}
            for command_id, reply in replies
        ]
        await conn.execute(
            text(
                f"UPDATE {self._name} AS t SET status = :done, reply = r.reply, "
                "updated_at = now() "
                "FROM jsonb_to_recordset(:rows) AS r(command_id text, reply jsonb) "
                "WHERE t.command_id = r.command_id"
            ).bindparams(bindparam("rows", type_=JSONB)),
            {"rows": rows, "done": CommandStatus.DONE.value},
        )

    async def delete_many(self, conn: AsyncConnection, command_ids: Collection[str]) -> None:
        """:meth:`delete` for many commands in one statement."""
        if command_ids:
            await conn.execute(
                delete(self.table).where(
                    self.table.c.command_id == any_(bindparam("ids", type_=ARRAY(Text)))
                ),
                {"ids": list(command_ids)},
            )

    async def insert_tombstone(
        self, conn: AsyncConnection, command_id: str, holder: Envelope, reply: Envelope | None
    ) -> bool:
        """Record ``command_id`` as ``fenced``; False if it is already recorded.

        Args:
            command_id: The command the saga gave up on.
            holder: What the row keeps as its command: the command's own envelope when it is
                at hand (look-ahead), else the undo that fences it.
            reply: The refusal, when the command's envelope is at hand; else None until the
                command arrives (see :meth:`update_fenced`).
        """
        # ON CONFLICT DO NOTHING: a command claimed or answered first keeps its record (an
        # uncommitted claim is waited for); the caller then reads that record instead.
        statement = (
            insert(self.table)
            .values(
                command_id=command_id,
                message_type=holder.message_type,
                status=CommandStatus.FENCED.value,
                saga_id=holder.saga_id,
                command=holder.model_dump(mode="json"),
                reply=None if reply is None else reply.model_dump(mode="json"),
            )
            .on_conflict_do_nothing(index_elements=["command_id"])
            .returning(self.table.c.command_id)
        )
        return (await conn.execute(statement)).first() is not None

    async def update_fenced(
        self, conn: AsyncConnection, command_id: str, command: Envelope, reply: Envelope
    ) -> None:
        """Turn a pending command into a tombstone, or complete a tombstone with the refusal
        of the command it fences once that command has arrived."""
        values: dict[str, Any] = {
            "status": CommandStatus.FENCED.value,
            "message_type": command.message_type,
            "command": command.model_dump(mode="json"),
            "reply": reply.model_dump(mode="json"),
            "updated_at": func.now(),
        }
        await conn.execute(
            update(self.table).where(self.table.c.command_id == command_id).values(**values)
        )

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

    async def update_reply(self, conn: AsyncConnection, command_id: str, reply: Envelope) -> None:
        """Replace a recorded reply, keeping the command's status (a stand-in for a reply
        Kafka would never take); nothing happens when no reply is recorded."""
        await conn.execute(
            update(self.table)
            .where(self.table.c.command_id == command_id, self.table.c.reply.is_not(None))
            .values(reply=reply.model_dump(mode="json"), updated_at=func.now())
        )

    async def delete(self, conn: AsyncConnection, command_id: str) -> None:
        """Forget a command, so that a re-send runs its handler again."""
        await conn.execute(delete(self.table).where(self.table.c.command_id == command_id))
