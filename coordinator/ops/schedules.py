"""Operators' view of the schedules: list them with their next tick, pause and resume them.

Used by ``saga schedules`` (PostgreSQL only), the HTTP API and the console. A pause is a flag
on the schedule's row that every coordinator's scheduler reads in the transaction that would
fire a tick, so it holds across instances at once; ticks that fall in a pause are not caught
up on resume (the cursor moves to the resume).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from coordinator.core.clock import Clock
from coordinator.core.schedule import Cron, ScheduleError, ScheduleNotFoundError
from coordinator.store.saga_store import SagaStore
from coordinator.store.schedules import FiredTick, ScheduleRecord, ScheduleStore

__all__ = ["ScheduleAdmin", "ScheduleView"]

_MAX_REASON = 500


@dataclass(frozen=True)
class ScheduleView:
    """A schedule as operators see it (times UTC)."""

    name: str
    saga_type: str
    cron: str
    description: str
    catch_up: str
    source: str
    paused: bool
    next_tick_at: datetime | None
    """None while paused (or when the expression names no further tick)."""
    last_tick_at: datetime | None
    last_saga_id: str | None
    last_fired_at: datetime | None
    paused_at: datetime | None
    paused_by: str | None
    pause_reason: str | None
    declared_at: datetime

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready values (ISO 8601 times)."""
        return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in asdict(self).items()}


def _view(record: ScheduleRecord, now: datetime) -> ScheduleView:
    try:
        cron: Cron | None = Cron(record.cron)
    except ScheduleError:
        cron = None  # declared by a coordinator whose parser knew more: shown, not computed
    next_tick = None
    if cron is not None and not record.paused:
        next_tick = cron.after(max(record.cursor_at, now))
    return ScheduleView(
        name=record.name,
        saga_type=record.saga_type,
        cron=record.cron,
        description=cron.describe() if cron is not None else record.cron,
        catch_up=record.catch_up,
        source=record.source,
        paused=record.paused,
        next_tick_at=next_tick,
        last_tick_at=record.last_tick_at,
        last_saga_id=record.last_saga_id,
        last_fired_at=record.last_fired_at,
        paused_at=record.paused_at,
        paused_by=record.paused_by,
        pause_reason=record.pause_reason,
        declared_at=record.declared_at,
    )


class ScheduleAdmin:
    """Lists, pauses and resumes schedules in the database."""

    def __init__(self, store: SagaStore, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        self._schedules = ScheduleStore()

    async def list_schedules(self) -> list[ScheduleView]:
        """Every schedule any coordinator declared, by name."""
        async with self._store.engine.connect() as conn:
            records = await self._schedules.select_schedules(conn)
        now = self._clock.now()
        return [_view(r, now) for r in records]

    async def show(self, name: str) -> tuple[ScheduleView, list[FiredTick]]:
        """One schedule and its newest fired ticks.

        Raises:
            ScheduleNotFoundError: No schedule has this name.
        """
        async with self._store.engine.connect() as conn:
            record = await self._schedules.select_schedule(conn, name)
            if record is None:
                raise ScheduleNotFoundError(f"no schedule named {name!r}")
            ticks = await self._schedules.select_ticks(conn, name)
        return _view(record, self._clock.now()), ticks

    async def pause(self, name: str, *, actor: str, reason: str) -> ScheduleView:
        """Stop firing ``name`` on every coordinator until resumed.

        Raises:
            ScheduleNotFoundError: No schedule has this name.
        """
        return await self._set(name, paused=True, actor=actor, reason=reason)

    async def resume(self, name: str, *, actor: str, reason: str | None = None) -> ScheduleView:
        """Fire ``name`` again from its next tick on (ticks during the pause stay unfired).

        Raises:
            ScheduleNotFoundError: No schedule has this name.
        """
        return await self._set(name, paused=False, actor=actor, reason=reason)

    async def _set(
        self, name: str, *, paused: bool, actor: str, reason: str | None
    ) -> ScheduleView:
        now = self._clock.now()
        async with self._store.engine.begin() as conn:
            record = await self._schedules.update_paused(
                conn,
                name,
                paused=paused,
                actor=actor,
                reason=(reason or None) and reason[:_MAX_REASON],
                now=now,
            )
        if record is None:
            raise ScheduleNotFoundError(f"no schedule named {name!r}")
        return _view(record, now)
