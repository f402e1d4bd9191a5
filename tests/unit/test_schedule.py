"""Cron ticks and the missed-tick policy of scheduled sagas (coordinator.core.schedule)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel

from coordinator.core.schedule import (
    COUNT_LIMIT,
    CatchUp,
    Cron,
    Schedule,
    ScheduledSaga,
    ScheduleError,
    plan_ticks,
    schedule_saga_id,
    scheduled_sagas,
    tick_message_id,
)

T0 = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)
GRACE = timedelta(seconds=30)


def _at(**delta: float) -> datetime:
    return T0 + timedelta(**delta)


def test_a_five_field_expression_ticks_at_whole_minutes_in_utc() -> None:
    cron = Cron("0 2 * * *")
    assert cron.after(T0) == T0 + timedelta(days=1)
    assert cron.after(T0 - timedelta(seconds=1)) == T0
    assert cron.at_or_before(T0) == T0
    assert cron.at_or_before(T0 - timedelta(microseconds=1)) == T0 - timedelta(days=1)
    assert cron.describe() == "At 02:00 every day"


def test_a_six_field_expression_has_seconds_first() -> None:
    cron = Cron("*/10 * * * * *")
    assert cron.after(T0) == _at(seconds=10)
    assert cron.newest(T0, _at(seconds=35), 10) == [_at(seconds=s) for s in (30, 20, 10)]
    assert cron.count(T0, _at(seconds=35), 100) == 3
    assert cron.count(T0, _at(seconds=35), 2) == 2


def test_times_in_other_zones_are_read_as_the_same_instant() -> None:
    cron = Cron("0 2 * * *")
    paris = datetime(2026, 12, 1, 3, 0, tzinfo=UTC).astimezone().tzinfo
    assert paris is not None
    assert cron.at_or_before(T0.astimezone(paris)) == T0


@pytest.mark.parametrize("expression", ["", "61 * * * *", "* * * *", "0 0 31 2 *", "a b c d e"])
def test_a_malformed_expression_is_refused(expression: str) -> None:
    with pytest.raises(ScheduleError):
        Cron(expression)


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        Cron("* * * * *").after(datetime(2026, 1, 1))  # noqa: DTZ001


def test_an_on_time_tick_fires_under_every_policy() -> None:
    cron = Cron("* * * * * *")
    for policy in CatchUp:
        plan = plan_ticks(
            cron, _at(seconds=4), _at(seconds=5.3), policy, grace=GRACE, max_catch_up=100
        )
        assert plan.fire == (_at(seconds=5),)
        assert plan.skipped == 0
        assert plan.cursor == _at(seconds=5)


def test_nothing_is_due_before_the_next_tick() -> None:
    cron = Cron("0 2 * * *")
    plan = plan_ticks(cron, T0, _at(hours=23), CatchUp.ALL, grace=GRACE, max_catch_up=100)
    assert plan.fire == ()
    assert plan.skipped == 0
    assert plan.cursor == T0


def test_a_cursor_ahead_of_this_clock_fires_nothing() -> None:
    # Another coordinator's clock runs ahead and has handled a tick this one has not reached.
    plan = plan_ticks(
        Cron("* * * * * *"),
        _at(seconds=10),
        _at(seconds=9),
        CatchUp.ALL,
        grace=GRACE,
        max_catch_up=10,
    )
    assert (plan.fire, plan.skipped, plan.cursor) == ((), 0, _at(seconds=10))


def _outage(policy: CatchUp, max_catch_up: int = 100) -> tuple[tuple[datetime, ...], int]:
    """Hourly ticks, the scheduler down from 02:00 to 07:10 (five ticks missed, 03..07)."""
    plan = plan_ticks(
        Cron("0 * * * *"),
        T0,
        _at(hours=5, minutes=10),
        policy,
        grace=GRACE,
        max_catch_up=max_catch_up,
    )
    assert plan.cursor == _at(hours=5)
    return plan.fire, plan.skipped


def test_skip_fires_none_of_the_missed_ticks() -> None:
    assert _outage(CatchUp.SKIP) == ((), 5)


def test_latest_fires_only_the_newest_missed_tick() -> None:
    assert _outage(CatchUp.LATEST) == ((_at(hours=5),), 4)


def test_all_fires_every_missed_tick_oldest_first() -> None:
    assert _outage(CatchUp.ALL) == (tuple(_at(hours=h) for h in range(1, 6)), 0)


def test_all_is_capped_keeping_the_newest_ticks() -> None:
    assert _outage(CatchUp.ALL, max_catch_up=2) == ((_at(hours=4), _at(hours=5)), 3)


def test_latest_lets_an_on_time_tick_stand_for_the_missed_ones() -> None:
    plan = plan_ticks(
        Cron("* * * * *"),
        T0,
        _at(minutes=10, seconds=5),
        CatchUp.LATEST,
        grace=GRACE,
        max_catch_up=100,
    )
    assert plan.fire == (_at(minutes=10),)
    assert plan.skipped == 9


def test_skip_still_fires_the_ticks_within_the_grace_period() -> None:
    plan = plan_ticks(
        Cron("*/10 * * * * *"),
        T0,
        _at(minutes=5, seconds=1),
        CatchUp.SKIP,
        grace=GRACE,
        max_catch_up=100,
    )
    assert plan.fire == (_at(minutes=4, seconds=40), _at(minutes=4, seconds=50), _at(minutes=5))
    assert plan.skipped == 30 - 3


def test_a_long_outage_of_a_frequent_schedule_is_planned_quickly() -> None:
    # A per-second schedule down a whole day: 86,400 ticks are neither fired nor all counted.
    plan = plan_ticks(
        Cron("* * * * * *"), T0, _at(days=1), CatchUp.ALL, grace=GRACE, max_catch_up=50
    )
    assert len(plan.fire) == 50
    assert plan.fire[-1] == _at(days=1)
    assert plan.skipped == COUNT_LIMIT - 50


def test_the_saga_id_names_the_schedule_and_the_tick() -> None:
    assert schedule_saga_id("nightly", T0) == "nightly@20261201T020000Z"
    assert tick_message_id("nightly", T0) == "schedule:nightly@20261201T020000Z"


class _Data(BaseModel):
    day: str


def _build(tick: datetime) -> _Data:
    return _Data(day=tick.date().isoformat())


class _Definition:
    schedules: ClassVar[tuple[Schedule[Any], ...]] = (
        Schedule("nightly", "0 2 * * *", _build, catch_up="latest"),
    )


class _Plain:
    pass


def test_schedules_come_from_definitions_and_the_configuration() -> None:
    configured = ScheduledSaga(
        "hourly", "report", Cron("0 * * * *"), lambda t: {"at": t.isoformat()}, source="config"
    )
    found = scheduled_sagas([("report", _Definition), ("other", _Plain)], [configured])
    assert [(s.name, s.saga_type, s.catch_up) for s in found] == [
        ("nightly", "report", CatchUp.LATEST),
        ("hourly", "report", CatchUp.SKIP),
    ]
    assert found[0].data_for(T0) == {"day": "2026-12-01"}
    assert found[1].data_for(T0) == {"at": T0.isoformat()}


def test_two_schedules_of_one_name_are_refused() -> None:
    twin = ScheduledSaga("nightly", "report", Cron("0 3 * * *"), lambda t: {})
    with pytest.raises(ScheduleError, match="two schedules"):
        scheduled_sagas([("report", _Definition)], [twin])


def test_a_configured_schedule_of_an_unknown_saga_type_is_refused() -> None:
    lost = ScheduledSaga("lost", "nowhere", Cron("0 3 * * *"), lambda t: {})
    with pytest.raises(ScheduleError, match="not registered"):
        scheduled_sagas([("report", _Definition)], [lost])


def test_a_schedule_is_checked_when_declared() -> None:
    with pytest.raises(ScheduleError, match="catch_up"):
        Schedule("x", "* * * * *", _build, catch_up="sometimes")
    with pytest.raises(ScheduleError, match="name"):
        Schedule("Bad Name", "* * * * *", _build)
    with pytest.raises(ScheduleError, match="cron"):
        Schedule("x", "every night", _build)


def test_schedules_are_declared_in_the_configuration_as_json(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from coordinator.config import Settings

    monkeypatch.setenv(
        "SAGA_SCHEDULES__DECLARED",
        '[{"name": "hourly-audit", "saga_type": "audit", "cron": "0  * * * *", '
        '"data": {"scope": "all"}, "tick_field": "at", "catch_up": "all"}]',
    )
    (config,) = Settings().schedules.declared
    scheduled = config.scheduled()
    assert (scheduled.name, scheduled.cron.expression, scheduled.catch_up) == (
        "hourly-audit",
        "0 * * * *",
        CatchUp.ALL,
    )
    assert scheduled.source == "configuration"
    assert scheduled.data_for(T0) == {"scope": "all", "at": "2026-12-01T02:00:00+00:00"}


def test_a_configured_schedule_with_a_bad_cron_is_refused_when_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pydantic import ValidationError

    from coordinator.config import Settings

    monkeypatch.setenv(
        "SAGA_SCHEDULES__DECLARED", '[{"name": "x", "saga_type": "audit", "cron": "at two"}]'
    )
    with pytest.raises(ValidationError, match="cron expression"):
        Settings()
