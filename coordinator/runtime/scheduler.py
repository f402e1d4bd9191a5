"""The scheduler: starts the sagas of due schedule ticks, each tick once across coordinators.

Every coordinator runs one. Each round (every ``interval_s``) it, in ONE transaction:

1. locks the schedules it declares that are not paused (``FOR UPDATE SKIP LOCKED``: one
   coordinator at a time handles a schedule, the others skip it for that round);
2. plans the ticks since the schedule's cursor (:func:`~coordinator.core.schedule.plan_ticks`:
   on-time ticks fire, missed ones by the catch-up policy);
3. claims each tick to fire with ``INSERT ... ON CONFLICT DO NOTHING`` on (schedule, tick), and
   inserts the saga of every tick it claimed, its history and its first command (outbox);
4. moves the schedule's cursor past the ticks handled.

So a tick's saga exists if and only if its tick row does. Were the lock bypassed, the tick's
primary key would still let one coordinator claim it; were the tick rows gone, the saga id
(``<schedule>@<tick>``) would make a second start a duplicate. A tick whose data cannot be
built or does not fit the saga's model is recorded ``failed`` (and logged) and not retried.
Starts obey admission control: beyond the caps the saga is created QUEUED, and the admitter
lets it go.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.config import ScheduleSettings
from coordinator.core.admission import AdmissionLimits
from coordinator.core.clock import Clock
from coordinator.core.definition import SagaRegistry
from coordinator.core.machine import start_saga
from coordinator.core.schedule import (
    ScheduledSaga,
    plan_ticks,
    schedule_saga_id,
    tick_message_id,
)
from coordinator.core.state import StartSaga, Transition
from coordinator.observability.schedule_metrics import ScheduleMetrics
from coordinator.observability.tracing import ensure_traceparent
from coordinator.store.persist import persist
from coordinator.store.saga_store import SagaStore
from coordinator.store.schedules import FiredTick, ScheduleRecord, ScheduleStore
from service_sdk.contract import Topics
from service_sdk.retry import RetryLog, RetryPolicy, call_with_retries

__all__ = ["Scheduler", "SchedulerRound"]

logger = logging.getLogger(__name__)

_UPKEEP_INTERVAL_S = 15.0
"""How often the schedule gauges are sampled and old ticks deleted."""
_TICK_DELETE_BATCH = 10_000


@dataclass
class SchedulerRound:
    """What one round did."""

    fired: list[FiredTick]
    skipped: int
    started: list[Transition]


class Scheduler:
    """Fires the ticks of ``schedules``; ``start()``-free: :meth:`run` until :meth:`stop`."""

    def __init__(
        self,
        store: SagaStore,
        registry: SagaRegistry,
        topics: Topics,
        clock: Clock,
        settings: ScheduleSettings,
        schedules: Sequence[ScheduledSaga],
        *,
        admission: AdmissionLimits | None = None,
        metrics: ScheduleMetrics | None = None,
        on_commit: Callable[[list[Transition]], None] | None = None,
    ) -> None:
        self._store = store
        self._registry = registry
        self._topics = topics
        self._clock = clock
        self._settings = settings
        self._by_name = {s.name: s for s in schedules}
        self._admit = (admission or AdmissionLimits()).unlimited
        self._metrics = metrics
        self._on_commit = on_commit
        self._schedules = ScheduleStore()
        self._stopping = asyncio.Event()
        self._upkeep_at = 0.0
        self._next_due: datetime | None = None
        """No tick of ours is due before this (None: unknown, look in the database)."""
        # A failed round is tried again at the next interval, for as long as it takes: the
        # ticks it did not fire are still after the cursor.
        self._retries = RetryPolicy(
            initial_backoff_s=settings.interval_s, max_backoff_s=max(settings.interval_s, 5.0)
        )
        self._retry_log = RetryLog(logger, "scheduler", level=logging.ERROR, exc_info=True)
        if metrics is not None:
            metrics.prime(self._by_name)

    @property
    def schedules(self) -> tuple[ScheduledSaga, ...]:
        """The schedules this scheduler fires."""
        return tuple(self._by_name.values())

    async def declare(self) -> None:
        """Record this coordinator's schedules (new ones count their ticks from now on)."""
        async with self._store.engine.begin() as conn:
            await self._schedules.upsert_schedules(
                conn, list(self._by_name.values()), self._clock.now()
            )

    async def fire_once(self) -> SchedulerRound:
        """Fire the due ticks of the schedules no other coordinator is firing right now."""
        done = SchedulerRound([], 0, [])
        if not self._by_name:
            return done
        now = self._clock.now()
        if self._next_due is not None and now < self._next_due:
            return done  # a nightly schedule costs no transaction a second
        async with self._store.transaction() as conn:
            claimed = await self._schedules.claim_schedules(conn, self._by_name)
            for record in claimed:
                await self._fire(conn, record, now, done)
            inserted = await self._store.insert_sagas(conn, [t.instance for t in done.started])
            # A saga id that exists already was started for this tick before: a duplicate.
            done.started = [t for t in done.started if t.instance.saga_id in inserted]
            if done.started:
                await persist(self._store, conn, self._topics, [], done.started, now)
        self._observe(done, now)
        self._next_due = self._due_after(claimed, done, now)
        if done.started and self._on_commit is not None:
            self._on_commit(done.started)
        return done

    async def _fire(
        self, conn: AsyncConnection, record: ScheduleRecord, now: datetime, done: SchedulerRound
    ) -> None:
        schedule = self._by_name[record.name]
        plan = plan_ticks(
            schedule.cron,
            record.cursor_at,
            now,
            schedule.catch_up,
            grace=timedelta(seconds=self._settings.misfire_grace_s),
            max_catch_up=self._settings.max_catch_up,
        )
        if plan.cursor == record.cursor_at:
            return
        ticks: list[FiredTick] = []
        starts: dict[datetime, Transition] = {}
        for tick in plan.fire:
            saga_id = schedule_saga_id(schedule.name, tick)
            try:
                starts[tick] = self._start(schedule, tick, saga_id, now)
                ticks.append(FiredTick(schedule.name, tick, saga_id, "started"))
            except Exception as exc:  # the saga author's build_data, or the data it built
                error = f"{type(exc).__name__}: {exc}"[:1_000]
                logger.error(
                    "schedule %s: tick %s starts no saga: %s",
                    schedule.name,
                    tick.isoformat(),
                    error,
                    extra={"saga_id": saga_id},
                )
                ticks.append(FiredTick(schedule.name, tick, saga_id, "failed", error))
        claimed = await self._schedules.insert_ticks(conn, ticks, now)
        fired = [t for t in ticks if (t.schedule, t.tick_at) in claimed]
        done.fired.extend(fired)
        done.started.extend(starts[t.tick_at] for t in fired if t.outcome == "started")
        done.skipped += plan.skipped
        if plan.skipped and self._metrics is not None:
            self._metrics.skipped(schedule.name, plan.skipped)
        if plan.skipped:
            logger.warning(
                "schedule %s: %d missed tick(s) skipped (catch_up=%s), up to %s",
                schedule.name,
                plan.skipped,
                schedule.catch_up.value,
                plan.cursor.isoformat(),
            )
        newest = next((t for t in reversed(fired) if t.outcome == "started"), None)
        await self._schedules.update_progress(
            conn, schedule.name, cursor_at=plan.cursor, last=newest, now=now
        )

    def _due_after(
        self, claimed: Sequence[ScheduleRecord], done: SchedulerRound, now: datetime
    ) -> datetime | None:
        """The earliest next tick of our schedules, when every one of them was claimed.

        Cursors only move forward (a fire, a skip, a resume), so no tick of ours can be due
        before it. A schedule not claimed (paused, or another coordinator's this round) is
        looked at again next round.
        """
        if len(claimed) < len(self._by_name):
            return None
        cursors = {r.name: r.cursor_at for r in claimed}
        for tick in done.fired:
            cursors[tick.schedule] = max(cursors[tick.schedule], tick.tick_at)
        upcoming = [
            self._by_name[name].cron.after(max(cursor, now)) for name, cursor in cursors.items()
        ]
        return min((t for t in upcoming if t is not None), default=None)

    def _start(
        self, schedule: ScheduledSaga, tick: datetime, saga_id: str, now: datetime
    ) -> Transition:
        definition = self._registry.get(schedule.saga_type)
        event = StartSaga(
            tick_message_id(schedule.name, tick),
            schedule.data_for(tick),
            ensure_traceparent(None),
        )
        # Beyond the admission caps the saga waits QUEUED; the admitter lets it go in turn.
        return start_saga(definition, saga_id, event, now, admit=self._admit)

    def _observe(self, done: SchedulerRound, now: datetime) -> None:
        started = {t.instance.saga_id for t in done.started}
        for tick in done.fired:
            if tick.outcome == "failed":
                if self._metrics is not None:
                    self._metrics.failed(tick.schedule)
                continue
            if tick.saga_id not in started:
                continue
            logger.info(
                "schedule %s: tick %s started saga %s",
                tick.schedule,
                tick.tick_at.isoformat(),
                tick.saga_id,
                extra={"saga_id": tick.saga_id},
            )
            if self._metrics is not None:
                self._metrics.fired(tick.schedule, (now - tick.tick_at).total_seconds())

    async def upkeep(self) -> None:
        """Sample the schedule gauges and delete ticks past their retention."""
        now = self._clock.now()
        async with self._store.engine.begin() as conn:
            records = await self._schedules.select_schedules(conn)
            await self._schedules.delete_ticks(
                conn,
                now - timedelta(seconds=self._settings.tick_retention_s),
                _TICK_DELETE_BATCH,
            )
        if self._metrics is not None:
            paused = sum(1 for r in records if r.paused)
            self._metrics.set_states({"active": len(records) - paused, "paused": paused})

    async def _round(self) -> None:
        await self.fire_once()
        if time.monotonic() >= self._upkeep_at:
            await self.upkeep()
            self._upkeep_at = time.monotonic() + _UPKEEP_INTERVAL_S

    async def run(self) -> None:
        """Declare the schedules, then fire due ticks every ``interval_s`` until stopped."""
        if not self._by_name:
            return  # nothing to fire: no task to keep
        try:
            await call_with_retries(
                self.declare, self._retries, on_retry=self._retry_log, stop=self._stopping
            )
        except Exception:
            if not self._stopping.is_set():
                raise  # not reached: every failure is retried until stop
            return
        while not self._stopping.is_set():
            try:
                await call_with_retries(
                    self._round, self._retries, on_retry=self._retry_log, stop=self._stopping
                )
            except Exception:
                if not self._stopping.is_set():
                    raise
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._settings.interval_s)

    def stop(self) -> None:
        """Ask :meth:`run` to return after the current round."""
        self._stopping.set()
