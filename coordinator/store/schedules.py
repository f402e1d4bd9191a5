"""The schedules coordinators declared and the ticks they fired (``saga.saga_schedule*``)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.core.schedule import ScheduledSaga
from coordinator.store.schema import saga_schedule, saga_schedule_tick

__all__ = ["FiredTick", "ScheduleRecord", "ScheduleStore"]


@dataclass(frozen=True)
class ScheduleRecord:
    """A schedule's row: what was declared, how far its ticks are handled, whether paused."""

    name: str
    saga_type: str
    cron: str
    catch_up: str
    source: str
    cursor_at: datetime
    last_tick_at: datetime | None
    last_saga_id: str | None
    last_fired_at: datetime | None
    paused: bool
    paused_at: datetime | None
    paused_by: str | None
    pause_reason: str | None
    declared_at: datetime


@dataclass(frozen=True)
class FiredTick:
    """A tick claimed for a schedule: the saga it started, or why it could not start one."""

    schedule: str
    tick_at: datetime
    saga_id: str
    outcome: str
    """``started`` or ``failed`` (its data could not be built, or did not fit the model)."""
    error: str | None = None


def _record(row: Any) -> ScheduleRecord:
    return ScheduleRecord(**{c.name: getattr(row, c.name) for c in saga_schedule.columns})


class ScheduleStore:
    """Reads and writes schedules and their ticks, inside the caller's transaction."""

    async def upsert_schedules(
        self, conn: AsyncConnection, schedules: Sequence[ScheduledSaga], now: datetime
    ) -> None:
        """Record the declared schedules; a new one's ticks count from ``now`` on.

        An existing row keeps its cursor and its pause: a restart or a deploy neither replays
        nor resumes anything.
        """
        if not schedules:
            return
        statement = insert(saga_schedule).values(
            [
                {
                    "name": s.name,
                    "saga_type": s.saga_type,
                    "cron": s.cron.expression,
                    "catch_up": s.catch_up.value,
                    "source": s.source,
                    "cursor_at": now,
                    "declared_at": now,
                }
                for s in sorted(schedules, key=lambda s: s.name)
            ]
        )
        excluded = statement.excluded
        await conn.execute(
            statement.on_conflict_do_update(
                index_elements=[saga_schedule.c.name],
                set_={
                    "saga_type": excluded.saga_type,
                    "cron": excluded.cron,
                    "catch_up": excluded.catch_up,
                    "source": excluded.source,
                    "declared_at": excluded.declared_at,
                },
            )
        )

    async def claim_schedules(
        self, conn: AsyncConnection, names: Collection[str]
    ) -> list[ScheduleRecord]:
        """Lock the running (not paused) schedules among ``names`` for this transaction."""
        # SKIP LOCKED: a schedule another coordinator is firing right now is its business.
        result = await conn.execute(
            sa.select(saga_schedule)
            .where(saga_schedule.c.name.in_(sorted(names)))
            .where(sa.not_(saga_schedule.c.paused))
            .order_by(saga_schedule.c.name)
            .with_for_update(skip_locked=True)
        )
        return [_record(row) for row in result]

    async def insert_ticks(
        self, conn: AsyncConnection, ticks: Sequence[FiredTick], now: datetime
    ) -> set[tuple[str, datetime]]:
        """Claim ``ticks``; returns the (schedule, tick) pairs that were not claimed before."""
        if not ticks:
            return set()
        # ON CONFLICT DO NOTHING: a tick already fired (by any coordinator) is not fired again.
        result = await conn.execute(
            insert(saga_schedule_tick)
            .values(
                [
                    {
                        "schedule": t.schedule,
                        "tick_at": t.tick_at,
                        "saga_id": t.saga_id,
                        "outcome": t.outcome,
                        "error": t.error,
                        "fired_at": now,
                    }
                    for t in ticks
                ]
            )
            .on_conflict_do_nothing(
                index_elements=[saga_schedule_tick.c.schedule, saga_schedule_tick.c.tick_at]
            )
            .returning(saga_schedule_tick.c.schedule, saga_schedule_tick.c.tick_at)
        )
        return {(row.schedule, row.tick_at) for row in result}

    async def update_progress(
        self,
        conn: AsyncConnection,
        name: str,
        *,
        cursor_at: datetime,
        last: FiredTick | None,
        now: datetime,
    ) -> None:
        """Move the schedule's cursor, and record its newest fired tick."""
        values: dict[str, Any] = {"cursor_at": cursor_at}
        if last is not None:
            values.update(last_tick_at=last.tick_at, last_saga_id=last.saga_id, last_fired_at=now)
        await conn.execute(
            sa.update(saga_schedule).where(saga_schedule.c.name == name).values(**values)
        )

    async def select_schedules(self, conn: AsyncConnection) -> list[ScheduleRecord]:
        """Every schedule ever declared, by name."""
        result = await conn.execute(sa.select(saga_schedule).order_by(saga_schedule.c.name))
        return [_record(row) for row in result]

    async def select_schedule(self, conn: AsyncConnection, name: str) -> ScheduleRecord | None:
        """One schedule, or None."""
        result = await conn.execute(sa.select(saga_schedule).where(saga_schedule.c.name == name))
        row = result.one_or_none()
        return None if row is None else _record(row)

    async def select_ticks(
        self, conn: AsyncConnection, name: str, *, limit: int = 20
    ) -> list[FiredTick]:
        """The newest fired ticks of a schedule, newest first."""
        t = saga_schedule_tick.c
        result = await conn.execute(
            sa.select(t.schedule, t.tick_at, t.saga_id, t.outcome, t.error)
            .where(t.schedule == name)
            .order_by(t.tick_at.desc())
            .limit(limit)
        )
        return [FiredTick(**row._mapping) for row in result]

    async def update_paused(
        self,
        conn: AsyncConnection,
        name: str,
        *,
        paused: bool,
        actor: str,
        reason: str | None,
        now: datetime,
    ) -> ScheduleRecord | None:
        """Pause or resume; None if no such schedule.

        Resuming moves the cursor to ``now``: ticks that fell in the pause are not caught up.
        """
        s = saga_schedule.c
        values: dict[str, Any] = {
            "paused": paused,
            "paused_at": now,
            "paused_by": actor,
            "pause_reason": reason,
        }
        if not paused:
            values["cursor_at"] = sa.func.greatest(s.cursor_at, now)
        result = await conn.execute(
            sa.update(saga_schedule).where(s.name == name).values(**values).returning(saga_schedule)
        )
        row = result.one_or_none()
        return None if row is None else _record(row)

    async def delete_ticks(self, conn: AsyncConnection, before: datetime, limit: int) -> int:
        """Delete up to ``limit`` ticks fired before ``before``; returns how many.

        Only history goes: a schedule's cursor already keeps its old ticks from firing.
        """
        t = saga_schedule_tick.c
        oldest = (
            sa.select(t.schedule, t.tick_at)
            .where(t.fired_at < before)
            .order_by(t.fired_at)
            .limit(limit)
        )
        result = await conn.execute(
            sa.delete(saga_schedule_tick).where(sa.tuple_(t.schedule, t.tick_at).in_(oldest))
        )
        return result.rowcount or 0
