"""Scheduled sagas over real Kafka + PostgreSQL: three coordinators, one saga per tick.

Time is one :class:`~coordinator.core.clock.FakeClock` shared by the three coordinators: the
per-second schedule ticks when the test moves the clock, so the test runs twenty ticks in a
couple of seconds and none that it did not make. Pause and resume go through the HTTP API
of one coordinator and hold on the others.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import ClassVar

import httpx
import sqlalchemy as sa
from pydantic import BaseModel, SecretStr

from coordinator.app import Coordinator
from coordinator.config import ScheduleSettings, Settings
from coordinator.core.clock import FakeClock
from coordinator.core.definition import SagaDefinition, SagaRegistry, Step
from coordinator.core.schedule import Schedule, schedule_saga_id
from coordinator.store.schema import saga_instance, saga_schedule_tick
from service_sdk import Command, Topics, decode_envelope
from tests.integration.conftest import TopicReader
from tests.support.outbox import outbox_sent
from tests.support.waiting import eventually

TOKEN = "schedules-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Tally(Command):
    """The tally saga's only command (nobody answers it: the saga stays RUNNING)."""

    message_type: ClassVar[str] = "tally.count"
    tick: datetime


class TallyData(BaseModel):
    tick: datetime


class TallySaga(SagaDefinition[TallyData]):
    name = "tally"
    data_model = TallyData
    steps = (
        Step[TallyData](
            name="count",
            service="tally",
            command=Tally,
            build=lambda d: Tally(tick=d.tick),
            timeout=timedelta(hours=1),
        ),
    )
    schedules: ClassVar[tuple[Schedule[TallyData], ...]] = (
        Schedule("tally-every-second", "* * * * * *", lambda tick: TallyData(tick=tick)),
    )


REGISTRY = SagaRegistry([TallySaga])
NAME = "tally-every-second"


def _settings(base: Settings) -> Settings:
    settings = base.model_copy(deep=True)
    settings.schedules = ScheduleSettings(interval_s=0.05)
    settings.http.token = SecretStr(TOKEN)
    return settings


async def _saga_ids(coordinator: Coordinator) -> set[str]:
    async with coordinator.store.engine.connect() as conn:
        rows = await conn.execute(sa.select(saga_instance.c.saga_id))
        return set(rows.scalars())


async def _ticks(coordinator: Coordinator) -> list[datetime]:
    async with coordinator.store.engine.connect() as conn:
        rows = await conn.execute(sa.select(saga_schedule_tick.c.tick_at))
        return sorted(rows.scalars())


async def _declared(coordinator: Coordinator) -> None:
    """Wait until the schedule's row exists: its ticks count from then on."""

    async def declared() -> bool:
        async with coordinator.store.engine.connect() as conn:
            found = await conn.scalar(sa.text("SELECT count(*) FROM saga.saga_schedule"))
        assert found == 1
        return True

    await eventually(declared, what="the schedule declared")


async def _until_started(coordinator: Coordinator, ticks: list[datetime]) -> None:
    wanted = {schedule_saga_id(NAME, t) for t in ticks}

    async def started() -> bool:
        missing = wanted - await _saga_ids(coordinator)
        assert not missing, f"not started yet: {sorted(missing)}"
        return True

    await eventually(started, timeout=30, what="the ticks' sagas")


async def test_three_coordinators_start_one_saga_per_tick_and_obey_a_pause(
    coordinator_settings: Settings,
    running_coordinator: Callable[..., contextlib.AbstractAsyncContextManager[Coordinator]],
    topic_reader: Callable[[str], TopicReader],
) -> None:
    settings = _settings(coordinator_settings)
    now = datetime.now(UTC)
    clock = FakeClock(now.replace(microsecond=500_000))
    start = clock.now()
    async with contextlib.AsyncExitStack() as stack:
        coordinators = [
            await stack.enter_async_context(running_coordinator(settings, REGISTRY, clock))
            for _ in range(3)
        ]
        first = coordinators[0]
        await _declared(first)

        # Twenty ticks, one clock second at a time, each raced for by three schedulers.
        ticks: list[datetime] = []
        for _ in range(20):
            clock.advance(timedelta(seconds=1))
            ticks.append(clock.now().replace(microsecond=0))
        await _until_started(first, ticks)

        # Paused through one coordinator's API: no coordinator fires the ticks that follow.
        assert first.http is not None
        await first.http.wait_started()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{first.http.port}") as api:
            paused = await api.post(
                f"/schedules/{NAME}/pause", json={"reason": "audit", "actor": "ann"}, headers=AUTH
            )
            assert paused.status_code == 200, paused.text
            assert paused.json()["paused"] is True
            in_pause = []
            for _ in range(5):
                clock.advance(timedelta(seconds=1))
                in_pause.append(clock.now().replace(microsecond=0))
            resumed = await api.post(f"/schedules/{NAME}/resume", json={}, headers=AUTH)
            assert resumed.status_code == 200, resumed.text
            clock.advance(timedelta(seconds=1))
            after = clock.now().replace(microsecond=0)
            await _until_started(first, [after])
            listed = (await api.get("/schedules", headers=AUTH)).json()["items"]
            assert [(s["name"], s["paused"], s["last_saga_id"]) for s in listed] == [
                (NAME, False, schedule_saga_id(NAME, after))
            ]

        expected = {schedule_saga_id(NAME, t) for t in [*ticks, after]}
        assert await _saga_ids(first) == expected
        assert await _ticks(first) == sorted([*ticks, after])
        assert not {schedule_saga_id(NAME, t) for t in in_pause} & await _saga_ids(first)
        await outbox_sent(first.store)
        # Each saga's command went out once, whichever coordinator started it.
        topic = Topics(settings.kafka.topic_prefix).commands("tally")
        async with topic_reader(topic) as reader:
            sent = [decode_envelope(r.value) for r in await reader.published()]
        assert sorted(e.saga_id for e in sent) == sorted(expected)
        assert all(t > start for t in ticks)
    # The three stopped cleanly (their schedulers with them): the contexts returned.
    fired = sum(c.metrics.schedules.ticks.labels(NAME, "fired")._value.get() for c in coordinators)
    assert fired == len(expected)


@contextlib.asynccontextmanager
async def _one(
    settings: Settings,
    running_coordinator: Callable[..., contextlib.AbstractAsyncContextManager[Coordinator]],
    clock: FakeClock,
) -> AsyncIterator[Coordinator]:
    async with running_coordinator(settings, REGISTRY, clock) as coordinator:
        yield coordinator


async def test_ticks_missed_while_every_coordinator_was_down_are_skipped_by_default(
    coordinator_settings: Settings,
    running_coordinator: Callable[..., contextlib.AbstractAsyncContextManager[Coordinator]],
) -> None:
    settings = _settings(coordinator_settings)
    clock = FakeClock(datetime.now(UTC).replace(microsecond=500_000))
    async with _one(settings, running_coordinator, clock) as coordinator:
        await _declared(coordinator)
        clock.advance(timedelta(seconds=1))
        first_tick = clock.now().replace(microsecond=0)
        await _until_started(coordinator, [first_tick])
    # Down for two minutes: 120 ticks missed, the newest 30 of them within the grace.
    clock.advance(timedelta(minutes=2))
    back = clock.now().replace(microsecond=0)
    on_time = [back - timedelta(seconds=s) for s in range(30)]
    async with _one(settings, running_coordinator, clock) as coordinator:
        await _until_started(coordinator, on_time)
        started = await _saga_ids(coordinator)
        skipped = coordinator.metrics.schedules.ticks.labels(NAME, "skipped")._value.get()
    # catch_up=skip: the 90 older ticks never fire.
    assert started == {schedule_saga_id(NAME, t) for t in [first_tick, *on_time]}
    assert skipped == 90
