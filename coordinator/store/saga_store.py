"""The saga store: every SQL statement the coordinator runs against PostgreSQL.

Each method takes an :class:`~sqlalchemy.ext.asyncio.AsyncConnection` the caller opened with
``engine.begin()``: the caller owns the one transaction that applies a batch of replies (inbox,
saga rows, history, outbox together, or none of them). Each method is one round-trip whatever
the batch size, never a loop of single-row statements. (Inserts are sent by SQLAlchemy's
"insertmanyvalues" as multi-row statements of up to 1,000 rows each, so a batch of more rows
takes one statement per thousand.)
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coordinator.core.errors import SagaConflictError
from coordinator.core.state import (
    TERMINAL_STATUSES,
    HistoryEntry,
    LifecyclePublishing,
    SagaInstance,
    SagaStatus,
    head_of,
)
from coordinator.store.awaiting import (
    awaiting_from_json,
    awaiting_to_json,
    signals_from_json,
    signals_to_json,
)
from coordinator.store.database import json_dumps
from coordinator.store.records import HistoryRecord, OutboxMessage, OutboxRecord
from coordinator.store.schema import (
    ACTIVE_DEADLINE_PREDICATE,
    inbox,
    outbox,
    saga_history,
    saga_instance,
)

__all__ = [
    "SagaStore",
    "saga_from_row",
    "saga_to_row",
    "saga_update_row",
]


def _aware(value: datetime, name: str) -> datetime:
    # A naive datetime would be read by PostgreSQL in the session's time zone, silently moving
    # deadlines by hours on a server not set to UTC.
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got {value!r}")
    return value


def _aware_or_none(value: datetime | None, name: str) -> datetime | None:
    return None if value is None else _aware(value, name)


def saga_to_row(instance: SagaInstance) -> dict[str, Any]:
    """The ``saga_instance`` column values of ``instance`` (all but ``version``)."""
    return {
        "saga_id": instance.saga_id,
        "saga_type": instance.saga_type,
        "definition_version": instance.definition_version,
        "status": instance.status.value,
        "current_step": instance.current_step,
        "command_id": instance.command_id,
        "attempt": instance.attempt,
        "deadline_at": _aware_or_none(instance.deadline_at, "deadline_at"),
        "completed_steps": list(instance.completed_steps),
        "compensated_steps": list(instance.compensated_steps),
        "data": instance.data,
        "failure_reason": instance.failure_reason,
        "traceparent": instance.traceparent,
        "epoch": instance.epoch,
        "service": instance.service,
        "picked_up_at": _aware_or_none(instance.picked_up_at, "picked_up_at"),
        "in_doubt_step": instance.in_doubt_step,
        "in_doubt_command_id": instance.in_doubt_command_id,
        "created_at": _aware(instance.created_at, "created_at"),
        "updated_at": _aware(instance.updated_at, "updated_at"),
        "completed_at": instance.updated_at if instance.is_terminal else None,
        "business_keys": list(instance.business_keys),
        "awaiting": awaiting_to_json(instance.awaiting),
        "stage": instance.stage,
        "skipped_steps": list(instance.skipped_steps),
        "pending_signals": signals_to_json(instance.pending_signals),
        "parent_saga_id": instance.parent_saga_id,
        "parent_step": instance.parent_step,
    }


def _awaiting_of(row: Mapping[Any, Any]) -> dict[str, Any]:
    """``awaiting`` and ``stage`` of a row, unless a writer that predates them (a coordinator
    of an older release, during a rolling deploy) moved the saga on: then its scalar columns
    are the truth, and they describe a straight line of steps."""
    awaiting = awaiting_from_json(row.get("awaiting"))
    head = head_of(awaiting)
    scalars = (
        row["current_step"],
        row["command_id"],
        row["attempt"],
        row["deadline_at"],
        row["service"],
        row["picked_up_at"],
    )
    if (head is None and row["current_step"] is None) or (
        head is not None
        and (
            head.step,
            head.command_id,
            head.attempt,
            head.deadline_at,
            head.service,
            head.picked_up_at,
        )
        == scalars
    ):
        return {"awaiting": awaiting, "stage": row.get("stage") or 0}
    # SagaInstance derives the one awaited entry from the scalars.
    return {"awaiting": (), "stage": len(row["completed_steps"])}


def saga_from_row(row: Mapping[Any, Any]) -> SagaInstance:
    """The :class:`SagaInstance` stored in a ``saga_instance`` row."""
    return SagaInstance(
        saga_id=row["saga_id"],
        saga_type=row["saga_type"],
        definition_version=row["definition_version"],
        status=SagaStatus(row["status"]),
        data=row["data"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        current_step=row["current_step"],
        command_id=row["command_id"],
        attempt=row["attempt"],
        deadline_at=row["deadline_at"],
        completed_steps=tuple(row["completed_steps"]),
        compensated_steps=tuple(row["compensated_steps"]),
        failure_reason=row["failure_reason"],
        traceparent=row["traceparent"],
        epoch=row["epoch"],
        service=row["service"],
        picked_up_at=row["picked_up_at"],
        in_doubt_step=row["in_doubt_step"],
        in_doubt_command_id=row["in_doubt_command_id"],
        business_keys=tuple(row.get("business_keys") or ()),
        **_awaiting_of(row),
        skipped_steps=tuple(row.get("skipped_steps") or ()),
        pending_signals=signals_from_json(row.get("pending_signals")),
        parent_saga_id=row.get("parent_saga_id"),
        parent_step=row.get("parent_step"),
        version=row["version"],
    )


_UPDATED_COLUMNS = (
    "status",
    "current_step",
    "command_id",
    "attempt",
    "deadline_at",
    "completed_steps",
    "compensated_steps",
    "data",
    "failure_reason",
    "traceparent",
    "epoch",
    "service",
    "picked_up_at",
    "in_doubt_step",
    "in_doubt_command_id",
    "awaiting",
    "stage",
    "skipped_steps",
    "pending_signals",
    "updated_at",
)
"""What a transition may change; id, type, definition version and creation time never do."""


def _json_row(row: dict[str, Any]) -> dict[str, Any]:
    """A row as JSON values (timestamps as ISO strings) for ``jsonb_to_recordset``."""
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}


def saga_update_row(instance: SagaInstance) -> dict[str, Any]:
    """One JSON object of the batch :meth:`SagaStore.update_sagas` sends as a single parameter."""
    row = saga_to_row(instance)
    values = _json_row({name: row[name] for name in _UPDATED_COLUMNS})
    return {"saga_id": instance.saga_id, "read_version": instance.version, **values}


def _history_from_row(row: Mapping[Any, Any]) -> HistoryRecord:
    return HistoryRecord(
        id=row["id"],
        saga_id=row["saga_id"],
        at=row["at"],
        kind=row["kind"],
        step=row["step"],
        message_id=row["message_id"],
        detail=row["detail"],
    )


def _outbox_from_row(row: Mapping[Any, Any]) -> OutboxRecord:
    return OutboxRecord(
        id=row["id"],
        saga_id=row["saga_id"],
        topic=row["topic"],
        key=row["key"],
        value=row["value"],
        headers=row["headers"],
        message_id=row["message_id"],
        created_at=row["created_at"],
    )


def _text_array(name: str, values: Collection[str]) -> sa.BindParameter[Any]:
    # One array parameter (= ANY(:ids)) keeps the SQL text the same for every batch size, so
    # asyncpg prepares it once per connection instead of once per distinct IN-list length.
    value: Any = list(values)
    return sa.bindparam(name, value, type_=ARRAY(sa.Text))


def _id_array(name: str, values: Collection[int]) -> sa.BindParameter[Any]:
    value: Any = list(values)
    return sa.bindparam(name, value, type_=ARRAY(sa.BigInteger))


# Built once: a statement built per call has its cache key computed from scratch every time
# (a few percent of the coordinator's CPU when it handles one saga at a time).
_LOCK_SAGAS = (
    sa.select(saga_instance)
    .where(saga_instance.c.saga_id == sa.any_(sa.bindparam("saga_ids", type_=ARRAY(sa.Text))))
    # Locks are taken in one global order, so two coordinators overlapping during a
    # rebalance wait for each other instead of deadlocking.
    .order_by(saga_instance.c.saga_id)
    .with_for_update()
)
_FORGET_MESSAGES = sa.delete(inbox).where(
    inbox.c.message_id == sa.any_(sa.bindparam("ids", type_=ARRAY(sa.Text)))
)

# The batch of updates travels as one JSON array expanded server-side into rows: one statement
# of constant text for any batch size, with no bind-parameter limit (asyncpg allows 32,767).
_updates = (
    sa.func.jsonb_to_recordset(sa.bindparam("updates", type_=JSONB))
    .table_valued(
        sa.column("saga_id", sa.Text),
        sa.column("read_version", sa.Integer),
        *(sa.column(name, saga_instance.c[name].type) for name in _UPDATED_COLUMNS),
    )
    .render_derived(name="v", with_types=True)
)

_UPDATE_SAGAS = (
    sa.update(saga_instance)
    .where(
        saga_instance.c.saga_id == _updates.c.saga_id,
        # Optimistic check: a row changed since it was read (e.g. by the previous owner of the
        # partition during a rebalance overlap) is left alone and reported as a conflict.
        saga_instance.c.version == _updates.c.read_version,
    )
    .values(
        {
            **{name: _updates.c[name] for name in _UPDATED_COLUMNS},
            "version": saga_instance.c.version + 1,
            "completed_at": sa.case(
                (
                    _updates.c.status.in_(sorted(s.value for s in TERMINAL_STATUSES)),
                    sa.func.coalesce(saga_instance.c.completed_at, _updates.c.updated_at),
                ),
                else_=None,
            ),
        }
    )
    .returning(saga_instance.c.saga_id)
)


def _unnest(*columns: tuple[str, Any]) -> Any:
    """``unnest(:a, :b, ...) WITH ORDINALITY AS r(a, b, ..., ordinal)``: rows from one array
    parameter per column, so a statement has the same text (one prepared statement) for any
    number of rows."""
    arrays = [sa.bindparam(name, type_=ARRAY(type_)) for name, type_ in columns]
    return (
        sa.func.unnest(*arrays)
        .table_valued(
            *(sa.column(name, type_) for name, type_ in columns), with_ordinality="ordinal"
        )
        .render_derived(name="r")
    )


# The statements below write a whole batch in one round trip, each with a constant text
# (asyncpg prepares it once per connection; a multi-row VALUES list differs with every row
# count and would be parsed and planned again and again).
_inbox_rows = _unnest(("message_ids", sa.Text), ("saga_ids", sa.Text))
_INSERT_INBOX = (
    pg_insert(inbox)
    .from_select(
        ["message_id", "saga_id", "processed_at"],
        sa.select(
            _inbox_rows.c.message_ids,
            _inbox_rows.c.saga_ids,
            sa.bindparam("now", type_=inbox.c.processed_at.type),
        ),
    )
    .on_conflict_do_nothing(index_elements=[inbox.c.message_id])
    .returning(inbox.c.message_id)
)

_INSERTED_COLUMNS = tuple(c.name for c in saga_instance.c if c.name != "version")
_saga_rows = (
    sa.func.jsonb_to_recordset(sa.bindparam("sagas", type_=JSONB))
    .table_valued(*(sa.column(name, saga_instance.c[name].type) for name in _INSERTED_COLUMNS))
    .render_derived(name="v", with_types=True)
)
# ON CONFLICT DO NOTHING: saga ids are chosen by the requester and a start request can be
# redelivered; the first one wins.
_INSERT_SAGAS = (
    pg_insert(saga_instance)
    .from_select(
        [*_INSERTED_COLUMNS, "version"],
        sa.select(*(_saga_rows.c[name] for name in _INSERTED_COLUMNS), sa.literal(1)),
    )
    .on_conflict_do_nothing(index_elements=[saga_instance.c.saga_id])
    .returning(saga_instance.c.saga_id)
)

_HISTORY_COLUMNS = ("saga_id", "kind", "step", "message_id", "detail")
_history_rows = (
    sa.func.jsonb_to_recordset(sa.bindparam("rows", type_=JSONB))
    .table_valued(*(sa.column(name, saga_history.c[name].type) for name in _HISTORY_COLUMNS))
    .render_derived(name="h", with_types=True)
)
_INSERT_HISTORY = sa.insert(saga_history).from_select(
    [*_HISTORY_COLUMNS, "at"],
    sa.select(
        *(_history_rows.c[name] for name in _HISTORY_COLUMNS),
        sa.bindparam("now", type_=saga_history.c.at.type),
    ),
)

# An outbox message as one array parameter per column (see _message_arrays).
_MESSAGE_ARRAYS: tuple[tuple[str, Any], ...] = (
    ("saga_ids", sa.Text),
    ("topics", sa.Text),
    ("keys", sa.LargeBinary),
    ("values", sa.LargeBinary),
    ("headers", sa.Text),
    ("message_ids", sa.Text),
)
_MESSAGE_COLUMNS = ["saga_id", "topic", "key", "value", "headers", "message_id"]


def _message_values(rows: Any) -> list[Any]:
    """The :data:`_MESSAGE_COLUMNS` values of ``unnest`` rows made of :data:`_MESSAGE_ARRAYS`."""
    return [
        rows.c.saga_ids,
        rows.c.topics,
        rows.c["keys"],
        rows.c["values"],
        sa.cast(rows.c.headers, JSONB),
        rows.c.message_ids,
    ]


def _message_arrays(messages: Sequence[OutboxMessage | OutboxRecord]) -> dict[str, list[Any]]:
    """The :data:`_MESSAGE_ARRAYS` parameters of ``messages``."""
    return {
        "saga_ids": [m.saga_id for m in messages],
        "topics": [m.topic for m in messages],
        "keys": [m.key for m in messages],
        "values": [m.value for m in messages],
        "headers": [json_dumps(m.headers) for m in messages],
        "message_ids": [m.message_id for m in messages],
    }


_outbox_rows = _unnest(*_MESSAGE_ARRAYS)
_NO_CEILING = 2**63 - 1
_TAKE_OUTBOX = (
    sa.delete(outbox)
    .where(
        outbox.c.id.in_(
            sa.select(outbox.c.id)
            # Rows an older version marked sent (instead of deleting) wait for housekeeping.
            .where(outbox.c.sent_at.is_(None))
            .where(
                sa.or_(
                    outbox.c.id <= sa.bindparam("ceiling", type_=sa.BigInteger),
                    outbox.c.id == sa.any_(sa.bindparam("owed", type_=ARRAY(sa.BigInteger))),
                )
            )
            .order_by(outbox.c.id)
            .limit(sa.bindparam("limit"))
            # SKIP LOCKED: a sweep picks up what a crashed instance left, while two relays
            # never hold (and so never publish) the same row at once.
            .with_for_update(skip_locked=True)
        )
    )
    .returning(*outbox.c)
)

_CLAIM_OUTBOX = (
    sa.delete(outbox)
    .where(outbox.c.id == sa.any_(sa.bindparam("ids", type_=ARRAY(sa.BigInteger))))
    .returning(outbox.c.id)
)
_HIGHEST_OUTBOX_ID = sa.select(sa.func.max(outbox.c.id))

_restored_rows = _unnest(
    ("ids", sa.BigInteger), *_MESSAGE_ARRAYS, ("created_ats", outbox.c.created_at.type)
)
_RESTORE_OUTBOX = sa.insert(outbox).from_select(
    ["id", *_MESSAGE_COLUMNS, "created_at"],
    sa.select(_restored_rows.c.ids, *_message_values(_restored_rows), _restored_rows.c.created_ats),
)

_INSERT_OUTBOX = (
    sa.insert(outbox)
    .from_select(
        [*_MESSAGE_COLUMNS, "created_at"],
        sa.select(
            *_message_values(_outbox_rows), sa.bindparam("now", type_=outbox.c.created_at.type)
        ).order_by(_outbox_rows.c.ordinal),
    )
    .returning(outbox.c.id)
)


def _update_values(updates: Sequence[SagaInstance]) -> list[dict[str, Any]]:
    """The ``updates`` parameter of :data:`_UPDATE_SAGAS`."""
    if len({instance.saga_id for instance in updates}) != len(updates):
        raise ValueError("update_sagas got the same saga id more than once")
    return [saga_update_row(instance) for instance in updates]


def _check_updated(updates: Sequence[SagaInstance], updated: Collection[str]) -> None:
    """Raise :class:`SagaConflictError` unless every one of ``updates`` was saved."""
    missed = {instance.saga_id for instance in updates} - set(updated)
    if missed:
        first = min(missed)
        raise SagaConflictError(
            f"{len(missed)} saga(s) changed concurrently (first: {first})", saga_id=first
        )


def _history_values(rows: Sequence[tuple[str, HistoryEntry]]) -> list[dict[str, Any]]:
    """The ``rows`` parameter of :data:`_INSERT_HISTORY`."""
    return [
        {
            "saga_id": saga_id,
            "kind": entry.kind.value,
            "step": entry.step,
            "message_id": entry.message_id,
            "detail": entry.detail,
        }
        for saga_id, entry in rows
    ]


def _write_statement(updates: bool, history: bool, messages: bool) -> Any:
    """One statement doing what :meth:`SagaStore.update_sagas`, ``insert_history`` and
    ``insert_outbox`` do, for the parts present: rows ``(saga_id, NULL)`` per saga updated
    and ``(NULL, id)`` per outbox row inserted.

    Data-modifying CTEs all run, referenced or not, and the statement is atomic: one round
    trip instead of three (each a wake-up of the server and of this process).
    """
    parts: list[Any] = []
    ctes: list[Any] = []
    if updates:
        changed = _UPDATE_SAGAS.cte("changed")
        ctes.append(changed)
        parts.append(sa.select(changed.c.saga_id, sa.cast(sa.null(), sa.BigInteger).label("id")))
    if history:
        ctes.append(_INSERT_HISTORY.cte("appended"))
    if messages:
        queued = _INSERT_OUTBOX.cte("queued")
        ctes.append(queued)
        parts.append(sa.select(sa.cast(sa.null(), sa.Text).label("saga_id"), queued.c.id))
    if not parts:
        # History alone: a select of nothing, so the one CTE has a statement to hang on.
        parts.append(
            sa.select(
                sa.cast(sa.null(), sa.Text).label("saga_id"),
                sa.cast(sa.null(), sa.BigInteger).label("id"),
            ).where(sa.false())
        )
    if len(parts) == 1:
        return parts[0].add_cte(*ctes)
    first, *rest = parts
    return sa.union_all(first, *rest).add_cte(*ctes)


_WRITE_STATEMENTS = {
    (u, h, m): _write_statement(u, h, m)
    for u in (False, True)
    for h in (False, True)
    for m in (False, True)
    if u or h or m
}


class SagaStore:
    """Reads and writes saga instances, their history, the inbox and the outbox."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        lifecycle_events: LifecyclePublishing = LifecyclePublishing.ALL,
    ) -> None:
        self._engine = engine
        self.lifecycle_events = lifecycle_events
        """Which lifecycle events :func:`~coordinator.store.persist.persist` writes to the
        outbox."""
        self.on_committed: Callable[[list[OutboxRecord]], None] | None = None
        """Receives the outbox rows a :meth:`transaction` wrote, once it has committed (the
        relay publishes them from memory instead of reading them back)."""
        self._written: dict[AsyncConnection, list[OutboxRecord]] = {}

    @property
    def engine(self) -> AsyncEngine:
        """The engine callers open their transactions on."""
        return self._engine

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """``engine.begin()`` whose outbox rows go to :attr:`on_committed` once it commits.

        Nothing is handed over if the transaction rolls back or its commit fails; rows of a
        commit that failed ambiguously (and did happen) wait for the relay's sweep.
        """
        written: list[OutboxRecord] = []
        async with self._engine.begin() as conn:
            self._written[conn] = written
            try:
                yield conn
            finally:
                del self._written[conn]
        if written and self.on_committed is not None:
            self.on_committed(written)

    # -- inbox ---------------------------------------------------------------------------

    async def insert_inbox(
        self, conn: AsyncConnection, entries: Sequence[tuple[str, str | None]], now: datetime
    ) -> set[str]:
        """Record ``(message_id, saga_id)`` pairs as processed; return the ids new to the inbox.

        An id already there (or twice in ``entries``) is a redelivery and is not returned.
        """
        if not entries:
            return set()
        _aware(now, "now")
        # ON CONFLICT DO NOTHING: a message id seen before is a redelivery, not an error.
        result = await conn.execute(
            _INSERT_INBOX,
            {
                "message_ids": [m for m, _ in entries],
                "saga_ids": [s for _, s in entries],
                "now": now,
            },
        )
        return set(result.scalars().all())

    async def delete_inbox_messages(
        self, conn: AsyncConnection, message_ids: Sequence[str]
    ) -> None:
        """Forget these message ids: the batch refused them (a redelivery is judged anew)."""
        if not message_ids:
            return
        await conn.execute(_FORGET_MESSAGES, {"ids": list(message_ids)})

    # -- saga instances ------------------------------------------------------------------

    async def insert_sagas(
        self, conn: AsyncConnection, instances: Sequence[SagaInstance]
    ) -> set[str]:
        """Insert new sagas at version 1; return the ids actually inserted.

        A saga id that already exists is left untouched, so starting the same saga twice
        starts it once.
        """
        if not instances:
            return set()
        # ON CONFLICT DO NOTHING: saga ids are chosen by the requester and a start request can
        # be redelivered; the first one wins.
        rows = [_json_row(saga_to_row(instance)) for instance in instances]
        result = await conn.execute(_INSERT_SAGAS, {"sagas": rows})
        return set(result.scalars().all())

    async def select_sagas_for_update(
        self, conn: AsyncConnection, saga_ids: Collection[str]
    ) -> dict[str, SagaInstance]:
        """Lock and return the sagas with these ids (missing ids are absent from the result)."""
        if not saga_ids:
            return {}
        result = await conn.execute(_LOCK_SAGAS, {"saga_ids": list(saga_ids)})
        return {row.saga_id: saga_from_row(row._mapping) for row in result}

    async def update_sagas(self, conn: AsyncConnection, updates: Sequence[SagaInstance]) -> None:
        """Save new states; each instance carries the ``version`` it was read with.

        Every saved row gets ``version + 1``, and ``completed_at`` when its status is terminal.

        Raises:
            SagaConflictError: Some row's version is no longer the one read (or the row is
                gone). Rows of the batch may already have been updated: the caller's
                transaction must roll back, which leaving ``engine.begin()`` with the exception
                does.
            ValueError: The same saga id appears twice in ``updates``.
        """
        if not updates:
            return
        payload = _update_values(updates)
        result = await conn.execute(_UPDATE_SAGAS, {"updates": payload})
        _check_updated(updates, result.scalars().all())

    async def write_changes(
        self,
        conn: AsyncConnection,
        updates: Sequence[SagaInstance],
        history: Sequence[tuple[str, HistoryEntry]],
        messages: Sequence[OutboxMessage],
        now: datetime,
    ) -> list[int]:
        """:meth:`update_sagas`, :meth:`insert_history` and :meth:`insert_outbox` in one
        statement (one round trip); returns the outbox ids in the order given.

        Raises:
            SagaConflictError: As :meth:`update_sagas`; nothing of the statement is kept
                once the caller's transaction rolls back.
            ValueError: As :meth:`update_sagas`.
        """
        if not (updates or history or messages):
            return []
        _aware(now, "now")
        params: dict[str, Any] = {"now": now}
        if updates:
            params["updates"] = _update_values(updates)
        if history:
            params["rows"] = _history_values(history)
        if messages:
            params.update(_message_arrays(messages))
        statement = _WRITE_STATEMENTS[(bool(updates), bool(history), bool(messages))]
        saved: list[str] = []
        ids: list[int] = []
        for row in await conn.execute(statement, params):
            if row.saga_id is None:
                ids.append(row.id)
            else:
                saved.append(row.saga_id)
        if updates:
            _check_updated(updates, saved)
        # Ascending ids are the order given (see insert_outbox).
        ids.sort()
        written = self._written.get(conn)
        if written is not None:
            written.extend(m.stored(i, now) for i, m in zip(ids, messages, strict=True))
        return ids

    async def select_saga(self, conn: AsyncConnection, saga_id: str) -> SagaInstance | None:
        """The saga with this id, or None."""
        stmt = sa.select(saga_instance).where(saga_instance.c.saga_id == saga_id)
        row = (await conn.execute(stmt)).mappings().first()
        return None if row is None else saga_from_row(row)

    async def select_sagas(
        self,
        conn: AsyncConnection,
        *,
        status: SagaStatus | None = None,
        saga_type: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[SagaInstance]:
        """Sagas newest first, optionally of one status and/or type."""
        stmt = (
            sa.select(saga_instance)
            .order_by(saga_instance.c.created_at.desc(), saga_instance.c.saga_id.desc())
            .limit(limit)
            .offset(offset)
        )
        if status is not None:
            stmt = stmt.where(saga_instance.c.status == status.value)
        if saga_type is not None:
            stmt = stmt.where(saga_instance.c.saga_type == saga_type)
        result = await conn.execute(stmt)
        return [saga_from_row(row) for row in result.mappings()]

    async def count_sagas_by_status(
        self, conn: AsyncConnection
    ) -> dict[tuple[str, SagaStatus], int]:
        """How many sagas there are per ``(saga_type, status)``; absent pairs have none."""
        stmt = sa.select(
            saga_instance.c.saga_type, saga_instance.c.status, sa.func.count().label("n")
        ).group_by(saga_instance.c.saga_type, saga_instance.c.status)
        result = await conn.execute(stmt)
        return {(row.saga_type, SagaStatus(row.status)): row.n for row in result}

    async def count_overdue(
        self, conn: AsyncConnection, now: datetime, grace: timedelta
    ) -> dict[str, int]:
        """How many awaiting sagas per type have a deadline before ``now - grace``.

        With the deadline scanner healthy this stays at zero; absent types have none.
        """
        stmt = (
            sa.select(saga_instance.c.saga_type, sa.func.count().label("n"))
            # The partial index's predicate verbatim, so the planner can use that index.
            .where(sa.text(ACTIVE_DEADLINE_PREDICATE))
            .where(saga_instance.c.deadline_at < _aware(now, "now") - grace)
            .group_by(saga_instance.c.saga_type)
        )
        result = await conn.execute(stmt)
        return {row.saga_type: row.n for row in result}

    async def claim_due_deadlines(
        self,
        conn: AsyncConnection,
        now: datetime,
        limit: int,
        *,
        saga_types: Collection[str] | None = None,
        versions: Collection[tuple[str, int]] | None = None,
    ) -> list[SagaInstance]:
        """Lock and return up to ``limit`` awaiting sagas whose deadline is at or before ``now``.

        Earliest deadline first. The locks last until the caller's transaction ends.
        ``saga_types`` limits the claim to those types, ``versions`` to those
        ``(saga_type, definition_version)`` pairs (None: every one).
        """
        stmt = (
            sa.select(saga_instance)
            # The partial index's predicate verbatim, so the planner can use that index.
            .where(sa.text(ACTIVE_DEADLINE_PREDICATE))
            .where(saga_instance.c.deadline_at <= _aware(now, "now"))
            .order_by(saga_instance.c.deadline_at, saga_instance.c.saga_id)
            .limit(limit)
            # SKIP LOCKED: several coordinators scan at once; each deadline fires in exactly
            # one of them, and none waits for another's batch.
            .with_for_update(skip_locked=True)
        )
        if saga_types is not None:
            # A scanner claims only the types it can run: rows it would skip must not fill
            # its batch ahead of due sagas it could fire.
            stmt = stmt.where(
                saga_instance.c.saga_type == sa.any_(_text_array("types", saga_types))
            )
        if versions is not None:
            # Likewise for definition versions: a saga advances only with its own version.
            stmt = stmt.where(
                sa.tuple_(saga_instance.c.saga_type, saga_instance.c.definition_version).in_(
                    sorted(versions)
                )
            )
        result = await conn.execute(stmt)
        return [saga_from_row(row) for row in result.mappings()]

    # -- history -------------------------------------------------------------------------

    async def insert_history(
        self, conn: AsyncConnection, rows: Sequence[tuple[str, HistoryEntry]], now: datetime
    ) -> None:
        """Append ``(saga_id, entry)`` pairs to the sagas' histories, in the given order."""
        if not rows:
            return
        _aware(now, "now")
        await conn.execute(_INSERT_HISTORY, {"rows": _history_values(rows), "now": now})

    async def select_history(self, conn: AsyncConnection, saga_id: str) -> list[HistoryRecord]:
        """The saga's history, oldest first."""
        stmt = (
            sa.select(saga_history)
            .where(saga_history.c.saga_id == saga_id)
            .order_by(saga_history.c.id)
        )
        result = await conn.execute(stmt)
        return [_history_from_row(row) for row in result.mappings()]

    # -- outbox --------------------------------------------------------------------------

    async def insert_outbox(
        self, conn: AsyncConnection, messages: Sequence[OutboxMessage], now: datetime
    ) -> list[int]:
        """Queue messages for the relay; return their row ids, in the order given.

        Ids grow in the order given, and the relay publishes in id order.
        """
        if not messages:
            return []
        _aware(now, "now")
        result = await conn.execute(
            _INSERT_OUTBOX,
            {**_message_arrays(messages), "now": now},
        )
        # The rows are inserted in the order given (ORDER BY ordinal), and each draws its id
        # from the identity as it is inserted, so ascending ids are that order (RETURNING
        # itself promises none).
        return sorted(result.scalars().all())

    async def select_sagas_with_unsent_outbox(
        self, conn: AsyncConnection, saga_ids: Collection[str]
    ) -> set[str]:
        """Those of ``saga_ids`` that have an outbox row not yet published."""
        if not saga_ids:
            return set()
        stmt = (
            sa.select(outbox.c.saga_id)
            .where(outbox.c.sent_at.is_(None))
            .where(outbox.c.saga_id == sa.any_(_text_array("ids", saga_ids)))
            .distinct()
        )
        return set((await conn.execute(stmt)).scalars().all())

    async def take_outbox(
        self,
        conn: AsyncConnection,
        *,
        limit: int,
        ceiling: int | None = None,
        owed: Collection[int] = (),
    ) -> list[OutboxRecord]:
        """Lock and delete up to ``limit`` unsent rows in one statement; returns them in id
        order.

        Only rows with an id up to ``ceiling`` (any id when None) or among ``owed`` are
        taken. For the relay, which publishes them before committing and puts back
        (:meth:`restore_outbox`) those it could not publish. A published row is gone with
        the commit: an insert and a delete per message, where marking it sent cost an update
        (a new row version and index entries) and a later delete. Rows locked by another
        transaction are skipped, not waited for.
        """
        result = await conn.execute(
            _TAKE_OUTBOX,
            {
                "limit": limit,
                "ceiling": _NO_CEILING if ceiling is None else ceiling,
                "owed": list(owed),
            },
        )
        return sorted((_outbox_from_row(row) for row in result.mappings()), key=lambda r: r.id)

    async def claim_outbox(self, conn: AsyncConnection, ids: Collection[int]) -> set[int]:
        """Delete the rows with these ids, waiting for those another transaction holds; returns
        the ids deleted here.

        For the relay publishing rows from memory before it commits: a row missing from the
        result was taken (and published, or put back) by another relay, so it is not sent
        twice.
        """
        if not ids:
            return set()
        return set((await conn.execute(_CLAIM_OUTBOX, {"ids": list(ids)})).scalars().all())

    async def highest_outbox_id(self, conn: AsyncConnection) -> int:
        """The highest outbox row id there is (0 when there are none)."""
        return int(await conn.scalar(_HIGHEST_OUTBOX_ID) or 0)

    async def restore_outbox(self, conn: AsyncConnection, rows: Sequence[OutboxRecord]) -> None:
        """Put rows taken by :meth:`take_outbox` back, unsent, with their ids (so their place
        in the publishing order)."""
        if not rows:
            return
        await conn.execute(
            _RESTORE_OUTBOX,
            {
                "ids": [r.id for r in rows],
                **_message_arrays(rows),
                "created_ats": [r.created_at for r in rows],
            },
        )

    async def select_outbox_stats(self, conn: AsyncConnection, now: datetime) -> tuple[int, float]:
        """``(unsent rows, age in seconds of the oldest unsent row)``; the age is 0.0 if none."""
        stmt = sa.select(sa.func.count(), sa.func.min(outbox.c.created_at)).where(
            outbox.c.sent_at.is_(None)
        )
        pending, oldest = (await conn.execute(stmt)).one()
        if oldest is None:
            return int(pending), 0.0
        return int(pending), max(0.0, (_aware(now, "now") - oldest).total_seconds())

    async def delete_inbox(
        self, conn: AsyncConnection, older_than: datetime, limit: int = 10_000
    ) -> int:
        """Forget up to ``limit`` inbox entries processed before ``older_than``.

        A message redelivered after its entry is gone would be applied again, so the
        retention must outlast any redelivery (offsets are committed seconds after a batch).
        """
        doomed = (
            sa.select(inbox.c.message_id)
            .where(inbox.c.processed_at < _aware(older_than, "older_than"))
            .limit(limit)
            # SKIP LOCKED: a batch inserting or checking these ids is never waited for.
            .with_for_update(skip_locked=True)
        )
        result = await conn.execute(sa.delete(inbox).where(inbox.c.message_id.in_(doomed)))
        return result.rowcount

    async def delete_sent_outbox(
        self, conn: AsyncConnection, older_than: datetime, limit: int = 10_000
    ) -> int:
        """Delete up to ``limit`` rows sent before ``older_than``; return how many went.

        Bounded so housekeeping holds its locks briefly; call again while it returns ``limit``.
        """
        doomed = (
            sa.select(outbox.c.id)
            .where(outbox.c.sent_at < _aware(older_than, "older_than"))
            .order_by(outbox.c.id)
            .limit(limit)
            # SKIP LOCKED: two housekeepers (or a slow relay) never wait for each other.
            .with_for_update(skip_locked=True)
        )
        result = await conn.execute(sa.delete(outbox).where(outbox.c.id.in_(doomed)))
        return result.rowcount
