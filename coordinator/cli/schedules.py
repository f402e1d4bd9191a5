"""The ``saga schedules list | pause | resume`` commands (PostgreSQL only; times UTC).

Registered on the ``saga`` app by :mod:`coordinator.cli.main`. A pause holds on every
coordinator from their next round on (within ``SAGA_SCHEDULES__INTERVAL_S``); ticks that fall
in the pause are not caught up. Errors print one line to stderr and exit 1.

Examples::

    saga schedules list
    saga schedules pause nightly-trip-audit --reason "auditors on holiday"
    saga schedules resume nightly-trip-audit
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy.exc import SQLAlchemyError

from coordinator.cli.common import database_error_message, fail, settings_from
from coordinator.cli.options import ActorOpt, DatabaseOpt, JsonOpt
from coordinator.config import Settings
from coordinator.core.clock import SystemClock
from coordinator.core.errors import SagaError
from coordinator.ops.schedules import ScheduleAdmin, ScheduleView
from coordinator.store.database import create_engine
from coordinator.store.saga_store import SagaStore

__all__ = ["render_schedules", "schedules_app"]

T = TypeVar("T")

schedules_app = typer.Typer(
    help="Scheduled sagas: list them with their next tick, pause and resume them (UTC).",
    no_args_is_help=True,
)

NameArg = Annotated[str, typer.Argument(help="The schedule's name", show_default=False)]


def _run(settings: Settings, work: Callable[[ScheduleAdmin], Awaitable[T]]) -> T:
    async def main() -> T:
        engine = create_engine(settings.database.url, pool_size=1)
        try:
            return await work(ScheduleAdmin(SagaStore(engine), SystemClock()))
        finally:
            await engine.dispose()

    try:
        return asyncio.run(main())
    except SagaError as exc:
        fail(str(exc))
    except (OSError, SQLAlchemyError) as exc:
        fail(database_error_message(exc))


def _actor(actor: str | None) -> str:
    return (actor or os.environ.get("USER") or "operator").strip() or "operator"


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment is not None else "-"


def render_schedules(console: Console, views: list[ScheduleView]) -> None:
    """Print schedules as a table."""
    if not views:
        console.print("no schedules (none declared by a definition or SAGA_SCHEDULES__DECLARED)")
        return
    table = Table()
    for name in ("schedule", "saga type", "cron (UTC)", "catch-up", "state"):
        table.add_column(name, no_wrap=True)
    for name in ("next tick (UTC)", "last tick (UTC)", "last saga"):
        table.add_column(name, no_wrap=True)
    for v in views:
        state = (
            Text(f"paused by {v.paused_by}", style="bold yellow")
            if v.paused
            else Text("active", style="green")
        )
        table.add_row(
            Text(v.name),
            Text(v.saga_type),
            Text(f"{v.cron}  ({v.description})"),
            v.catch_up,
            state,
            _when(v.next_tick_at),
            _when(v.last_tick_at),
            Text(v.last_saga_id or "-"),
        )
    console.print(table)
    paused = [v for v in views if v.paused and v.pause_reason]
    for v in paused:
        console.print(f"{v.name}: paused {_when(v.paused_at)} UTC: {v.pause_reason}")


@schedules_app.command("list")
def list_schedules(database_url: DatabaseOpt = None, as_json: JsonOpt = False) -> None:
    """Every schedule with its next tick, last fired tick and pause."""
    settings = settings_from(database_url=database_url)
    views = _run(settings, lambda admin: admin.list_schedules())
    if as_json:
        typer.echo(json.dumps([v.as_dict() for v in views], indent=2))
        return
    render_schedules(Console(), views)


@schedules_app.command("pause")
def pause(
    name: NameArg,
    reason: Annotated[str, typer.Option("--reason", help="Why (shown with the schedule)")],
    actor: ActorOpt = None,
    database_url: DatabaseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Stop firing a schedule on every coordinator until it is resumed."""
    if not reason.strip():
        fail("--reason must not be empty")
    settings = settings_from(database_url=database_url)
    view = _run(settings, lambda a: a.pause(name, actor=_actor(actor), reason=reason.strip()))
    _done(view, as_json, "paused")


@schedules_app.command("resume")
def resume(
    name: NameArg,
    reason: Annotated[str | None, typer.Option("--reason", help="Why (optional)")] = None,
    actor: ActorOpt = None,
    database_url: DatabaseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Fire a paused schedule again from its next tick on (the pause's ticks stay unfired)."""
    settings = settings_from(database_url=database_url)
    view = _run(settings, lambda a: a.resume(name, actor=_actor(actor), reason=reason))
    _done(view, as_json, "resumed")


def _done(view: ScheduleView, as_json: bool, what: str) -> None:
    if as_json:
        typer.echo(json.dumps(view.as_dict(), indent=2))
        return
    after = f"; next tick {_when(view.next_tick_at)} UTC" if not view.paused else ""
    typer.echo(f"schedule {view.name} {what} by {view.paused_by}{after}")
