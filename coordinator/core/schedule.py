"""Sagas started on a schedule: cron expressions, their ticks, and what becomes of missed ones.

Pure: the scheduler (:mod:`coordinator.runtime.scheduler`) passes the time in. Every time here
is UTC: a cron expression is read in UTC (``0 2 * * *`` is 02:00 UTC, whatever the host's zone),
so a schedule fires at the same instants on every coordinator and has no daylight-saving gaps.

A schedule is declared on a saga definition (``schedules = (Schedule(...),)``) or in the
configuration (``SAGA_SCHEDULES__DECLARED``). Each *tick* (an instant the cron expression
names) starts one saga, whose id is derived from the schedule and the tick
(:func:`schedule_saga_id`), so even two coordinators racing for a tick would make a duplicate
start of one saga, which changes nothing.

Missed ticks (no coordinator ran, or none could reach the database) are decided by
:func:`plan_ticks` with the schedule's :class:`CatchUp` policy. A tick is *on time* while
it is at most ``grace`` old; on-time ticks always fire. Of the older (missed) ones:

* ``skip`` (the default): none fires; the schedule goes on with its next tick.
* ``latest``: the newest due tick fires, standing for the missed ones, unless an on-time
  tick fires anyway.
* ``all``: every missed tick fires, oldest first, up to ``max_catch_up`` ticks per round
  (the newest ones); the older ones beyond the cap are skipped.

Skipped ticks are counted (``saga_schedule_ticks_total{outcome="skipped"}``), never fired later.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Generic, TypeVar

from cronsim import CronSim, CronSimError
from cronsim.explain import explain as _explain
from pydantic import BaseModel

from coordinator.core.errors import SagaDefinitionError, SagaError

__all__ = [
    "COUNT_LIMIT",
    "CatchUp",
    "Cron",
    "Schedule",
    "ScheduleError",
    "ScheduleNotFoundError",
    "ScheduledSaga",
    "TickPlan",
    "plan_ticks",
    "schedule_saga_id",
    "scheduled_sagas",
    "tick_message_id",
]

D = TypeVar("D", bound=BaseModel)

_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,99}$")
_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)

COUNT_LIMIT = 10_000
"""Due ticks are counted up to this many per round (counting is a walk over the ticks, and a
per-second schedule down for a day has 86,400): the skipped count is a floor beyond."""


class ScheduleError(SagaDefinitionError):
    """A schedule is declared wrongly (bad name, cron expression, policy, or saga type)."""


class ScheduleNotFoundError(SagaError):
    """No schedule has the requested name."""


class CatchUp(StrEnum):
    """What becomes of ticks missed while no coordinator could fire them (module docstring)."""

    SKIP = "skip"
    LATEST = "latest"
    ALL = "all"


@dataclass(frozen=True)
class Cron:
    """A cron expression, read in UTC: five fields (minute first) or six (second first).

    Raises:
        ScheduleError: The expression is malformed or names no instant at all.
    """

    expression: str

    def __post_init__(self) -> None:
        text = " ".join(self.expression.split())
        object.__setattr__(self, "expression", text)
        try:
            next(iter(CronSim(text, _EPOCH)))
        except (CronSimError, StopIteration) as exc:
            raise ScheduleError(f"cron expression {self.expression!r}: {exc or 'no tick'}") from exc

    def after(self, moment: datetime) -> datetime | None:
        """The first tick strictly after ``moment`` (None: none within 50 years)."""
        try:
            return next(iter(CronSim(self.expression, _utc(moment))))
        except StopIteration:
            return None

    def at_or_before(self, moment: datetime) -> datetime | None:
        """The newest tick at or before ``moment``."""
        # Reverse iteration yields ticks strictly before its start: start a second later.
        start = _utc(moment).replace(microsecond=0) + timedelta(seconds=1)
        try:
            return next(iter(CronSim(self.expression, start, reverse=True)))
        except StopIteration:
            return None

    def newest(self, after: datetime, until: datetime, limit: int) -> list[datetime]:
        """Up to ``limit`` ticks in ``(after, until]``, newest first."""
        start = _utc(until).replace(microsecond=0) + timedelta(seconds=1)
        found: list[datetime] = []
        for tick in CronSim(self.expression, start, reverse=True):
            if tick <= after or len(found) >= limit:
                break
            found.append(tick)
        return found

    def count(self, after: datetime, until: datetime, limit: int) -> int:
        """How many ticks lie in ``(after, until]``, counting up to ``limit``."""
        counted = 0
        for tick in CronSim(self.expression, _utc(after)):
            if tick > until or counted >= limit:
                break
            counted += 1
        return counted

    def describe(self) -> str:
        """The expression in words (``At 02:00 every day``), UTC."""
        try:
            return _explain(self.expression)
        except Exception:  # the explainer is best-effort: the expression itself is valid
            return self.expression


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("schedule times must be timezone-aware")
    return moment.astimezone(UTC)


def _check_name(name: object, where: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ScheduleError(f"{where}: schedule name must match {_NAME.pattern}, got {name!r}")


def _catch_up(value: object, where: str) -> CatchUp:
    try:
        return CatchUp(str(value))
    except ValueError:
        choices = ", ".join(c.value for c in CatchUp)
        raise ScheduleError(f"{where}: catch_up must be one of {choices}, got {value!r}") from None


@dataclass(frozen=True)
class Schedule(Generic[D]):
    """A schedule declared on a saga definition: ``schedules = (Schedule(...),)``.

    Attributes:
        name: Unique among every schedule a coordinator runs (``[a-z][a-z0-9_-]*``); it
            names the sagas it starts (``<name>@<tick>``).
        cron: When, in UTC: five fields (``0 2 * * *``: 02:00 every day) or six, seconds first.
        build_data: The saga's start data for a tick (the tick's time, UTC).
        catch_up: What becomes of missed ticks: ``skip``, ``latest`` or ``all``.

    Raises:
        ScheduleError: When declared wrongly (at import of the definition's module).
    """

    name: str
    cron: str
    build_data: Callable[[datetime], D | Mapping[str, Any]]
    catch_up: CatchUp | str = CatchUp.SKIP

    def __post_init__(self) -> None:
        _check_name(self.name, "Schedule")
        Cron(self.cron)
        if not callable(self.build_data):
            raise ScheduleError(f"schedule {self.name!r}: build_data must be callable")
        object.__setattr__(self, "catch_up", _catch_up(self.catch_up, f"schedule {self.name!r}"))


@dataclass(frozen=True)
class ScheduledSaga:
    """A schedule bound to the saga type it starts, from a definition or the configuration."""

    name: str
    saga_type: str
    cron: Cron
    build_data: Callable[[datetime], BaseModel | Mapping[str, Any]] = field(compare=False)
    catch_up: CatchUp = CatchUp.SKIP
    source: str = "definition"

    def __post_init__(self) -> None:
        _check_name(self.name, "ScheduledSaga")
        object.__setattr__(self, "catch_up", _catch_up(self.catch_up, f"schedule {self.name!r}"))

    def data_for(self, tick: datetime) -> dict[str, Any]:
        """The start data of the saga for ``tick``, as JSON-ready values."""
        data = self.build_data(tick)
        if isinstance(data, BaseModel):
            return data.model_dump(mode="json")
        return dict(data)


def scheduled_sagas(
    definitions: Iterable[tuple[str, object]], configured: Iterable[ScheduledSaga] = ()
) -> tuple[ScheduledSaga, ...]:
    """Every schedule a coordinator runs: those of its definitions, then the configured ones.

    Args:
        definitions: ``(saga type, definition class)`` of the definition each type starts
            with; its ``schedules`` class attribute (a tuple of :class:`Schedule`) is read.
        configured: Schedules from the configuration (their saga types must be among
            ``definitions``).

    Raises:
        ScheduleError: Two schedules share a name, a ``schedules`` attribute holds something
            else than a :class:`Schedule`, or a configured saga type is not registered.
    """
    found: list[ScheduledSaga] = []
    types: set[str] = set()
    for saga_type, definition in definitions:
        types.add(saga_type)
        declared = getattr(definition, "schedules", ())
        if not isinstance(declared, tuple):
            raise ScheduleError(f"saga type {saga_type!r}: schedules must be a tuple of Schedule")
        for schedule in declared:
            if not isinstance(schedule, Schedule):
                raise ScheduleError(
                    f"saga type {saga_type!r}: schedules must hold Schedule, "
                    f"got {type(schedule).__name__}"
                )
            found.append(
                ScheduledSaga(
                    name=schedule.name,
                    saga_type=saga_type,
                    cron=Cron(schedule.cron),
                    build_data=schedule.build_data,
                    catch_up=CatchUp(schedule.catch_up),
                )
            )
    for schedule in configured:
        if schedule.saga_type not in types:
            raise ScheduleError(
                f"schedule {schedule.name!r} starts saga type {schedule.saga_type!r}, "
                "which is not registered"
            )
        found.append(schedule)
    names: set[str] = set()
    for schedule in found:
        if schedule.name in names:
            raise ScheduleError(f"two schedules are named {schedule.name!r}")
        names.add(schedule.name)
    return tuple(found)


@dataclass(frozen=True)
class TickPlan:
    """What one round does with a schedule's due ticks.

    Attributes:
        fire: The ticks to start a saga for, oldest first.
        skipped: Due ticks not fired (missed, or beyond the catch-up cap); counted up to
            :data:`COUNT_LIMIT`.
        cursor: Ticks at or before this are handled (the newest due tick, or the old cursor
            when none was due).
    """

    fire: tuple[datetime, ...]
    skipped: int
    cursor: datetime


def plan_ticks(
    cron: Cron,
    cursor: datetime,
    now: datetime,
    catch_up: CatchUp,
    *,
    grace: timedelta,
    max_catch_up: int,
) -> TickPlan:
    """Which ticks in ``(cursor, now]`` to fire, by the policy (see the module docstring).

    At most ``max_catch_up`` ticks fire per round, the newest kept.
    """
    if max_catch_up < 1:
        raise ValueError("max_catch_up must be >= 1")
    newest = cron.newest(cursor, now, max_catch_up)
    if not newest:
        return TickPlan((), 0, cursor)
    total = len(newest) if len(newest) < max_catch_up else cron.count(cursor, now, COUNT_LIMIT)
    on_time = [tick for tick in newest if tick >= now - grace]
    if catch_up is CatchUp.ALL:
        fire = newest
    elif on_time or catch_up is CatchUp.SKIP:
        fire = on_time
    else:
        fire = newest[:1]
    return TickPlan(tuple(reversed(fire)), max(total - len(fire), 0), newest[0])


def schedule_saga_id(schedule: str, tick: datetime) -> str:
    """The id of the saga ``schedule`` starts for ``tick``: ``nightly@20261201T020000Z``."""
    return f"{schedule}@{_utc(tick):%Y%m%dT%H%M%SZ}"


def tick_message_id(schedule: str, tick: datetime) -> str:
    """The message id of the start a tick makes (recorded in the saga's history)."""
    return f"schedule:{schedule_saga_id(schedule, tick)}"
