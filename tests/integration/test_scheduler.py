"""The scheduler over a real PostgreSQL: one saga per tick, however many schedulers race;
missed ticks after an outage by the catch-up policy; pause and resume; bad start data.

Time is a shared :class:`~coordinator.core.clock.FakeClock`: a tick is due when the test
moves the clock past it, never by sleeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from coordinator.config import ScheduleSettings
from coordinator.core.clock import FakeClock
from coordinator.core.definition import SagaDefinition, SagaRegistry, Step
from coordinator.core.schedule import (
    CatchUp,
    Cron,
    Schedule,
    ScheduledSaga,
    ScheduleNotFoundError,
    scheduled_sagas,
)
from coordinator.observability.schedule_metrics import ScheduleMetrics
from coordinator.ops.schedules import ScheduleAdmin
from coordinator.runtime.scheduler import Scheduler
from coordinator.store.database import create_engine
from coordinator.store.migrate import upgrade_database
from coordinator.store.saga_store import SagaStore
from coordinator.store.schema import outbox, saga_instance, saga_schedule_tick
from service_sdk import Command, Topics

T0 = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)


class Report(Command):
    """The report saga's only command (nobody answers it here)."""

    message_type: ClassVar[str] = "reports.make"
    day: str


class ReportData(BaseModel):
    day: str
    tick: datetime


def _report_data(tick: datetime) -> ReportData:
    return ReportData(day=tick.date().isoformat(), tick=tick)


class ReportSaga(SagaDefinition[ReportData]):
    name = "report"
    data_model = ReportData
    steps = (
        Step[ReportData](
            name="make",
            service="reports",
            command=Report,
            build=lambda d: Report(day=d.day),
            timeout=timedelta(hours=1),
        ),
    )
    schedules: ClassVar[tuple[Schedule[ReportData], ...]] = (
        Schedule("every-second", "* * * * * *", _report_data),
        Schedule("hourly-skip", "0 * * * *", _report_data, catch_up="skip"),
        Schedule("hourly-latest", "0 * * * *", _report_data, catch_up="latest"),
        Schedule("hourly-all", "0 * * * *", _report_data, catch_up="all"),
    )


REGISTRY = SagaRegistry([ReportSaga])
ALL = scheduled_sagas([("report", ReportSaga)])


def _only(*names: str) -> tuple[ScheduledSaga, ...]:
    return tuple(s for s in ALL if s.name in names)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[SagaStore]:
    await upgrade_database(database_url)
    engine = create_engine(database_url, pool_size=8)
    try:
        yield SagaStore(engine)
    finally:
        await engine.dispose()


def _scheduler(
    store: SagaStore,
    clock: FakeClock,
    schedules: Sequence[ScheduledSaga],
    *,
    metrics: ScheduleMetrics | None = None,
    max_catch_up: int = 100,
) -> Scheduler:
    return Scheduler(
        store,
        REGISTRY,
        Topics(""),
        clock,
        ScheduleSettings(interval_s=0.05, max_catch_up=max_catch_up),
        schedules,
        metrics=metrics,
    )


async def _sagas(store: SagaStore) -> dict[str, Any]:
    async with store.engine.connect() as conn:
        rows = await conn.execute(sa.select(saga_instance.c.saga_id, saga_instance.c.data))
        return {row.saga_id: row.data for row in rows}


async def _commands(store: SagaStore) -> list[str]:
    async with store.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(outbox.c.saga_id).where(outbox.c.topic == Topics("").commands("reports"))
        )
        return [row.saga_id for row in rows]


async def test_three_schedulers_racing_start_exactly_one_saga_per_tick(store: SagaStore) -> None:
    clock = FakeClock(T0 + timedelta(milliseconds=500))
    racers = [_scheduler(store, clock, _only("every-second")) for _ in range(3)]
    await racers[0].declare()
    await asyncio.gather(*(r.declare() for r in racers))  # a restart changes nothing
    stop = asyncio.Event()

    async def race(scheduler: Scheduler) -> int:
        fired = 0
        while not stop.is_set():
            fired += len((await scheduler.fire_once()).started)
            await asyncio.sleep(0)
        return fired

    tasks = [asyncio.create_task(race(r)) for r in racers]
    for _ in range(40):  # 40 ticks, each raced for by the three
        clock.advance(timedelta(seconds=1))
        await asyncio.sleep(0.02)
    stop.set()
    fired = await asyncio.gather(*tasks)
    # Whatever is left due fires once more, by one of them.
    for racer in racers:
        fired.append(len((await racer.fire_once()).started))

    sagas = await _sagas(store)
    expected = {f"every-second@20261201T0200{s:02d}Z" for s in range(1, 41)}
    assert set(sagas) == expected
    assert sum(fired) == 40
    assert sorted(await _commands(store)) == sorted(expected)  # one command per saga
    assert sagas["every-second@20261201T020007Z"] == {
        "day": "2026-12-01",
        "tick": "2026-12-01T02:00:07Z",
    }
    async with store.engine.connect() as conn:
        ticks = await conn.scalar(sa.select(sa.func.count()).select_from(saga_schedule_tick))
    assert ticks == 40


async def test_a_tick_already_fired_is_not_fired_again_by_a_scheduler_that_lags(
    store: SagaStore,
) -> None:
    clock = FakeClock(T0 + timedelta(milliseconds=500))
    ahead = _scheduler(store, clock, _only("every-second"))
    await ahead.declare()
    clock.advance(timedelta(seconds=2))
    assert len((await ahead.fire_once()).started) == 2
    # Another coordinator's clock is a second behind: its cursor read says nothing is due.
    behind = _scheduler(store, FakeClock(clock.now() - timedelta(seconds=1)), ALL[:1])
    assert (await behind.fire_once()).fired == []
    assert len(await _sagas(store)) == 2


@pytest.mark.parametrize(
    ("policy", "fired_hours", "skipped"),
    [
        (CatchUp.SKIP, [], 5),
        (CatchUp.LATEST, [7], 4),
        (CatchUp.ALL, [3, 4, 5, 6, 7], 0),
    ],
)
async def test_ticks_missed_while_no_scheduler_ran_follow_the_catch_up_policy(
    store: SagaStore, policy: CatchUp, fired_hours: list[int], skipped: int
) -> None:
    name = f"hourly-{policy.value}"
    clock = FakeClock(T0 + timedelta(minutes=1))
    metrics = ScheduleMetrics(CollectorRegistry())
    await _scheduler(store, clock, _only(name)).declare()
    # Every coordinator is down from 02:01 to 07:10: the ticks 03:00 .. 07:00 are missed.
    clock.advance(timedelta(hours=5, minutes=9))
    done = await _scheduler(store, clock, _only(name), metrics=metrics).fire_once()
    assert [t.tick_at.hour for t in done.fired] == fired_hours
    assert done.skipped == skipped
    assert set(await _sagas(store)) == {f"{name}@20261201T{h:02d}0000Z" for h in fired_hours}
    assert metrics.ticks.labels(name, "skipped")._value.get() == skipped
    assert metrics.ticks.labels(name, "fired")._value.get() == len(fired_hours)
    # Back to normal: the next tick fires on time under every policy.
    clock.advance(timedelta(minutes=50, seconds=1))
    again = await _scheduler(store, clock, _only(name)).fire_once()
    assert [t.tick_at.hour for t in again.fired] == [8]


async def test_catching_up_all_is_capped_keeping_the_newest_ticks(store: SagaStore) -> None:
    clock = FakeClock(T0 + timedelta(minutes=1))
    await _scheduler(store, clock, _only("hourly-all")).declare()
    clock.advance(timedelta(days=1))
    done = await _scheduler(store, clock, _only("hourly-all"), max_catch_up=3).fire_once()
    assert [t.tick_at.hour for t in done.fired] == [0, 1, 2]
    assert done.skipped == 21


async def test_a_paused_schedule_fires_nothing_and_resumes_from_its_next_tick(
    store: SagaStore,
) -> None:
    clock = FakeClock(T0 + timedelta(minutes=1))
    scheduler = _scheduler(store, clock, _only("hourly-all"))
    await scheduler.declare()
    admin = ScheduleAdmin(store, clock)
    paused = await admin.pause("hourly-all", actor="ann", reason="auditors away")
    assert (paused.paused, paused.paused_by, paused.next_tick_at) == (True, "ann", None)
    clock.advance(timedelta(hours=3))  # 03:00, 04:00, 05:00 fall in the pause
    assert (await scheduler.fire_once()).fired == []
    resumed = await admin.resume("hourly-all", actor="bob")
    assert resumed.next_tick_at == T0 + timedelta(hours=4)
    # catch_up=all catches up an outage, not a pause.
    assert (await scheduler.fire_once()).fired == []
    clock.advance(timedelta(hours=1))
    assert [t.tick_at.hour for t in (await scheduler.fire_once()).fired] == [6]
    (view,) = await admin.list_schedules()
    assert (view.last_saga_id, view.paused, view.paused_by) == (
        "hourly-all@20261201T060000Z",
        False,
        "bob",
    )
    with pytest.raises(ScheduleNotFoundError):
        await admin.pause("nope", actor="ann", reason="x")


async def test_a_tick_whose_data_does_not_fit_is_recorded_failed_and_not_retried(
    store: SagaStore,
) -> None:
    broken = ScheduledSaga(
        "broken", "report", Cron("* * * * * *"), lambda tick: {"day": 7}, catch_up=CatchUp.ALL
    )
    clock = FakeClock(T0 + timedelta(milliseconds=500))
    metrics = ScheduleMetrics(CollectorRegistry())
    scheduler = _scheduler(store, clock, [broken], metrics=metrics)
    await scheduler.declare()
    clock.advance(timedelta(seconds=1))
    done = await scheduler.fire_once()
    assert [(t.outcome, t.saga_id) for t in done.fired] == [("failed", "broken@20261201T020001Z")]
    assert "invalid data" in (done.fired[0].error or "")
    assert (await scheduler.fire_once()).fired == []
    assert await _sagas(store) == {}
    assert metrics.ticks.labels("broken", "failed")._value.get() == 1
    _, ticks = await ScheduleAdmin(store, clock).show("broken")
    assert [t.outcome for t in ticks] == ["failed"]


async def test_the_upkeep_counts_paused_schedules_and_forgets_old_ticks(store: SagaStore) -> None:
    clock = FakeClock(T0 + timedelta(milliseconds=500))
    metrics = ScheduleMetrics(CollectorRegistry())
    scheduler = _scheduler(store, clock, _only("every-second", "hourly-skip"), metrics=metrics)
    await scheduler.declare()
    clock.advance(timedelta(seconds=3))
    await scheduler.fire_once()
    await ScheduleAdmin(store, clock).pause("hourly-skip", actor="ann", reason="x")
    clock.advance(timedelta(days=8))
    await scheduler.upkeep()
    assert metrics.schedules.labels("paused")._value.get() == 1
    assert metrics.schedules.labels("active")._value.get() == 1
    async with store.engine.connect() as conn:
        ticks = await conn.scalar(sa.select(sa.func.count()).select_from(saga_schedule_tick))
    assert ticks == 0
    assert len(await _sagas(store)) == 3  # only the ticks' records go, never their sagas


async def test_before_the_next_tick_a_round_costs_no_statement(store: SagaStore) -> None:
    clock = FakeClock(T0 + timedelta(minutes=1))
    scheduler = _scheduler(store, clock, _only("hourly-skip"))
    await scheduler.declare()
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(str(args[2]))

    sa.event.listen(store.engine.sync_engine, "before_cursor_execute", count)
    try:
        assert (await scheduler.fire_once()).fired == []
        looked = len(statements)
        assert looked > 0
        clock.advance(timedelta(minutes=58))  # 02:59: the 03:00 tick is not due yet
        assert (await scheduler.fire_once()).fired == []
        assert len(statements) == looked
        clock.advance(timedelta(minutes=1))
        assert [t.tick_at.hour for t in (await scheduler.fire_once()).fired] == [3]
        assert len(statements) > looked
    finally:
        sa.event.remove(store.engine.sync_engine, "before_cursor_execute", count)


async def test_a_tick_claimed_twice_is_claimed_once_even_without_the_schedule_lock(
    store: SagaStore,
) -> None:
    # The second line of defence: were the row lock bypassed (or the cursor read stale), the
    # tick's primary key still lets one transaction claim it; the other starts nothing.
    from coordinator.store.schedules import FiredTick, ScheduleStore

    clock = FakeClock(T0)
    await _scheduler(store, clock, _only("every-second")).declare()
    ticks = ScheduleStore()
    tick = FiredTick("every-second", T0, "every-second@20261201T020000Z", "started")
    async with store.engine.begin() as first, store.engine.begin() as second:
        assert await ticks.insert_ticks(first, [tick], T0) == {("every-second", T0)}
        racing = asyncio.create_task(ticks.insert_ticks(second, [tick], T0))
        await asyncio.sleep(0.2)
        assert not racing.done()  # waits for the first transaction's outcome
        await first.commit()
        assert await racing == set()
