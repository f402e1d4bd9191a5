"""The ``saga show | list | retry | abort`` commands: operators inspect sagas and act on them.

Registered on the ``saga`` app by :mod:`coordinator.cli.main`. They talk to PostgreSQL only: the
commands a retry or abort queues in the outbox are published by the running coordinators'
periodic sweep, within about a second (``SAGA_RELAY__SWEEP_INTERVAL_S``). Errors print one line
to stderr and exit 1; usage errors exit 2.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text
from sqlalchemy.exc import SQLAlchemyError

from coordinator.cli.common import database_error_message, fail, registry_from, settings_from
from coordinator.cli.options import (
    ActorOpt,
    DatabaseOpt,
    DryRunOpt,
    JsonOpt,
    SagaIdArg,
    TopicPrefixOpt,
)
from coordinator.config import Settings
from coordinator.core.business_keys import parse_business_key
from coordinator.core.clock import SystemClock
from coordinator.core.errors import SagaError
from coordinator.core.state import HistoryKind, SagaInstance, SagaStatus
from coordinator.ops.actions import ActionResult, OperatorActions, SagaTimeline, saga_as_dict
from coordinator.store.database import create_engine
from coordinator.store.parking import ParkedSaga
from coordinator.store.records import HistoryRecord
from coordinator.store.saga_queries import DataHorizon
from coordinator.store.saga_store import SagaStore
from service_sdk.contract import Topics

__all__ = ["register", "render_action", "render_list", "render_timeline"]

T = TypeVar("T")

ReasonOpt = Annotated[
    str, typer.Option("--reason", help="Why (recorded in the saga's history)", show_default=False)
]
_STATUS_STYLE = {
    SagaStatus.QUEUED: "bold cyan",
    SagaStatus.RUNNING: "bold blue",
    SagaStatus.COMPENSATING: "bold yellow",
    SagaStatus.COMPLETED: "bold green",
    SagaStatus.COMPENSATED: "bold magenta",
    SagaStatus.FAILED: "bold red",
}
_KIND_STYLE = {
    HistoryKind.STEP_SUCCEEDED.value: "green",
    HistoryKind.COMPENSATION_SUCCEEDED.value: "green",
    HistoryKind.COMPLETED.value: "bold green",
    HistoryKind.COMPENSATED.value: "bold magenta",
    HistoryKind.STEP_FAILED.value: "red",
    HistoryKind.COMPENSATION_FAILED.value: "bold red",
    HistoryKind.FAILED.value: "bold red",
    HistoryKind.DEADLINE_MISSED.value: "yellow",
    HistoryKind.STEP_RETRYABLE_FAILURE.value: "yellow",
    HistoryKind.OPERATOR_ACTION.value: "bold cyan",
    HistoryKind.DUPLICATE_REPLY.value: "dim",
    HistoryKind.STALE_REPLY.value: "dim",
    HistoryKind.DUPLICATE_START.value: "dim",
    HistoryKind.STALE_DEADLINE.value: "dim",
}
_PAYLOAD_KINDS = {
    HistoryKind.STEP_SUCCEEDED.value,
    HistoryKind.SIGNAL_RECEIVED.value,
    HistoryKind.SIGNAL_KEPT.value,
    HistoryKind.SIGNAL_REJECTED.value,
}
_SENT_KINDS = {HistoryKind.COMMAND_SENT.value, HistoryKind.COMPENSATION_SENT.value}
_BEGUN_KINDS = {HistoryKind.SIGNAL_AWAITED.value, HistoryKind.CHILD_STARTED.value}
"""A wait or a child saga began: its forward phase is "sent" then, like a command."""
_AWAITING = {
    HistoryKind.COMMAND_SENT.value: "awaiting reply",
    HistoryKind.COMPENSATION_SENT.value: "awaiting reply",
    HistoryKind.SIGNAL_AWAITED.value: "awaiting signal",
    HistoryKind.CHILD_STARTED.value: "awaiting child saga",
}


# --- wiring ----------------------------------------------------------------------------------


def register(app: typer.Typer) -> None:
    """Add the saga commands to ``app``."""
    app.command("show")(show)
    app.command("list")(list_sagas)
    app.command("retry")(retry)
    app.command("abort")(abort)
    app.command("migrate")(migrate)


def _run(settings: Settings, work: Callable[[OperatorActions], Awaitable[T]]) -> T:
    """Run ``work`` against the database; errors become one line on stderr and exit 1."""

    async def main() -> T:
        engine = create_engine(settings.database.url, pool_size=1)
        try:
            actions = OperatorActions(
                SagaStore(engine, lifecycle_events=settings.events.publish),
                registry_from(settings),
                Topics(settings.kafka.topic_prefix),
                SystemClock(),
            )
            return await work(actions)
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


def _reason(reason: str) -> str:
    if not reason.strip():
        raise typer.BadParameter("must not be empty", param_hint="--reason")
    return reason.strip()


def _print_json(document: Any) -> None:
    typer.echo(json.dumps(document, indent=2, ensure_ascii=False))


# --- commands --------------------------------------------------------------------------------


def show(
    saga_id: SagaIdArg,
    as_json: JsonOpt = False,
    database_url: DatabaseOpt = None,
    topic_prefix: TopicPrefixOpt = None,
) -> None:
    """Show a saga: its state, its history and a per-step summary."""
    settings = settings_from(database_url=database_url, topic_prefix=topic_prefix)
    timeline = _run(settings, lambda actions: actions.show(saga_id))
    if as_json:
        _print_json(timeline.as_dict())
        return
    render_timeline(Console(highlight=False), timeline, SystemClock().now())


def list_sagas(
    status: Annotated[
        SagaStatus | None, typer.Option("--status", case_sensitive=False, help="Only this status")
    ] = None,
    saga_type: Annotated[str | None, typer.Option("--type", help="Only this saga type")] = None,
    key: Annotated[
        str | None,
        typer.Option(
            "--key",
            help="Only sagas with this business key, name=value (e.g. order_id=A-17)",
        ),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="At most N")] = 50,
    offset: Annotated[int, typer.Option("--offset", min=0, help="Skip the newest N")] = 0,
    parked: Annotated[
        bool,
        typer.Option(
            "--parked",
            help="Only parked sagas: replies wait for a coordinator that has their definition "
            "version",
        ),
    ] = False,
    as_json: JsonOpt = False,
    database_url: DatabaseOpt = None,
    topic_prefix: TopicPrefixOpt = None,
) -> None:
    """List sagas, newest first, and say how far back the stored data goes."""
    try:
        business_key = parse_business_key(key) if key is not None else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--key") from exc
    settings = settings_from(database_url=database_url, topic_prefix=topic_prefix)
    if parked:
        found = _run(settings, lambda actions: actions.list_parked(limit))
        if as_json:
            _print_json([parked_as_dict(p) for p in found])
            return
        render_parked(Console(highlight=False), found, SystemClock().now())
        return

    async def work(actions: OperatorActions) -> tuple[list[SagaInstance], DataHorizon]:
        found = await actions.list(
            status=status,
            saga_type=saga_type,
            limit=limit,
            offset=offset,
            business_key=business_key,
        )
        return found, await actions.horizon()

    sagas, horizon = _run(settings, work)
    if as_json:
        _print_json([saga_as_dict(s) for s in sagas])
        return
    console = Console(highlight=False)
    render_list(console, sagas, SystemClock().now(), limit=limit)
    console.print(describe_horizon(horizon, settings.housekeeping.saga_retention_s), style="dim")


def retry(
    saga_id: SagaIdArg,
    reason: ReasonOpt,
    actor: ActorOpt = None,
    dry_run: DryRunOpt = False,
    as_json: JsonOpt = False,
    database_url: DatabaseOpt = None,
    topic_prefix: TopicPrefixOpt = None,
) -> None:
    """Retry a saga: re-send the awaited command, or resume a FAILED saga's compensation."""
    _act("retry", saga_id, reason, actor, dry_run, as_json, database_url, topic_prefix)


def abort(
    saga_id: SagaIdArg,
    reason: ReasonOpt,
    actor: ActorOpt = None,
    dry_run: DryRunOpt = False,
    as_json: JsonOpt = False,
    database_url: DatabaseOpt = None,
    topic_prefix: TopicPrefixOpt = None,
) -> None:
    """Abort a running saga: stop going forward and compensate what was done."""
    _act("abort", saga_id, reason, actor, dry_run, as_json, database_url, topic_prefix)


def migrate(
    saga_id: SagaIdArg,
    to_version: Annotated[
        int, typer.Option("--to-version", min=1, help="The definition version to move to")
    ],
    reason: ReasonOpt,
    actor: ActorOpt = None,
    dry_run: DryRunOpt = False,
    as_json: JsonOpt = False,
    database_url: DatabaseOpt = None,
    topic_prefix: TopicPrefixOpt = None,
) -> None:
    """Move a saga onto a newer version of its definition, its data upcast (QUEUED, or
    RUNNING where the new version has the same steps up to the awaited one)."""
    why, who = _reason(reason), _actor(actor)
    settings = settings_from(database_url=database_url, topic_prefix=topic_prefix)
    result = _run(
        settings,
        lambda actions: actions.migrate(
            saga_id, to_version, actor=who, reason=why, dry_run=dry_run
        ),
    )
    if as_json:
        _print_json(result.as_dict())
        return
    console = Console(highlight=False)
    verb = "would move" if result.dry_run else "moved"
    console.print(
        f"saga {result.saga_id} ({result.status.value}, at {result.current_step or '-'}) {verb} "
        f"from version {result.from_version} to {result.to_version}"
    )
    console.print(f"upcasters: {', '.join(result.upcasters) or 'none'}")
    console.print(f"data before: {_compact(result.data_before, 400)}")
    console.print(f"data after:  {_compact(result.data_after, 400)}")
    if result.dry_run:
        console.print("dry run: nothing was written")


def _act(
    action: str,
    saga_id: str,
    reason: str,
    actor: str | None,
    dry_run: bool,
    as_json: bool,
    database_url: str | None,
    topic_prefix: str | None,
) -> None:
    why, who = _reason(reason), _actor(actor)
    settings = settings_from(database_url=database_url, topic_prefix=topic_prefix)

    async def work(actions: OperatorActions) -> ActionResult:
        act = actions.retry if action == "retry" else actions.abort
        return await act(saga_id, actor=who, reason=why, dry_run=dry_run)

    result = _run(settings, work)
    if as_json:
        _print_json(result.as_dict())
        return
    render_action(Console(highlight=False), result)


# --- rendering -------------------------------------------------------------------------------


def describe_horizon(horizon: DataHorizon, retention_s: float | None) -> str:
    """One line saying how far back the stored sagas go and how long finished ones stay."""
    if horizon.oldest_started_at is None:
        where = "No sagas stored."
    else:
        where = (
            "Data goes back to "
            f"{horizon.oldest_started_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC (oldest saga)."
        )
    if retention_s is None:
        return f"{where} Finished sagas are kept forever."
    days = retention_s / 86_400
    return (
        f"{where} COMPLETED and COMPENSATED sagas are deleted {days:g} days after they end "
        "(SAGA_HOUSEKEEPING__SAGA_RETENTION_S)."
    )


def _status(status: SagaStatus) -> Text:
    return Text(status.value, style=_STATUS_STYLE[status])


def _short(command_id: str | None) -> str:
    return "-" if not command_id else command_id[:8]


def _clock_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _span(seconds: float) -> str:
    """A duration: ``0.042s``, ``12.5s``, ``3m05s``, ``2h07m``, ``3d04h``."""
    seconds = max(seconds, 0.0)
    if seconds < 10:
        return f"{seconds:.3f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def _offset(at: datetime | None, start: datetime) -> str:
    return "-" if at is None else f"+{_span((at - start).total_seconds())}"


def _deadline(deadline: datetime | None, now: datetime) -> Text:
    if deadline is None:
        return Text("-")
    left = (deadline - now).total_seconds()
    when = _clock_time(deadline)
    if left >= 0:
        return Text(f"{when} (in {_span(left)})")
    return Text(f"{when} (overdue by {_span(-left)})", style="bold red")


def _compact(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def summarize(kind: str, detail: dict[str, Any]) -> str:
    """One line of what a history entry's detail says."""
    parts: list[str] = []
    if kind == HistoryKind.OPERATOR_ACTION.value:
        parts.append(f"{detail['action']} by {detail.get('actor')}: {detail.get('reason')}")
        if detail.get("ignored"):
            parts.append("(ignored: already compensating)")
        return " ".join(parts)
    if kind == HistoryKind.STARTED.value:
        parts.append(f"definition v{detail.get('definition_version')}")
    if detail.get("signal"):
        parts.append(f"signal {detail['signal']}")
    if kind == HistoryKind.CHILD_STARTED.value and detail.get("saga_type"):
        parts.append(f"child saga {detail['saga_type']}")
    if detail.get("kept"):
        parts.append("kept before the wait")
    if detail.get("message_type"):
        parts.append(str(detail["message_type"]))
    if detail.get("command_id"):
        parts.append(f"cmd {_short(detail['command_id'])}")
    if "attempt" in detail:
        parts.append(f"attempt {detail['attempt']}")
    if detail.get("purpose") not in (None, "forward"):
        parts.append(str(detail["purpose"]))
    if detail.get("outcome"):
        parts.append(str(detail["outcome"]))
    if detail.get("deadline") is True:
        parts.append("no reply by the deadline")
    for flag in ("superseded", "late"):
        if detail.get(flag):
            parts.append(flag)
    if detail.get("action") == "resume" or detail.get("compensate"):
        parts.append("compensating it")
    if detail.get("error"):
        parts.append(f"error: {detail['error']}")
    if detail.get("problem"):
        parts.append(f"problem: {detail['problem']}")
    if detail.get("reason"):
        parts.append(f"reason: {detail['reason']}")
    if kind in _PAYLOAD_KINDS and detail.get("payload"):
        parts.append(f"payload {_compact(detail['payload'])}")
    return ", ".join(parts)


@dataclass
class StepPhase:
    """What the history says about one step's command or its compensation."""

    step: str
    compensation: bool
    first_sent: datetime | None = None
    sends: int = 0
    replied: datetime | None = None
    result: str = "-"


def step_phases(instance: SagaInstance, history: tuple[HistoryRecord, ...]) -> list[StepPhase]:
    """Per step and phase (forward, compensation), in order of first appearance."""
    phases: dict[tuple[str, bool], StepPhase] = {}

    def phase(step: str, compensation: bool) -> StepPhase:
        key = (step, compensation)
        if key not in phases:
            phases[key] = StepPhase(step, compensation)
        return phases[key]

    for entry in history:
        if entry.step is None:
            continue
        kind, detail = entry.kind, entry.detail
        if kind in _SENT_KINDS or kind in _BEGUN_KINDS:
            p = phase(entry.step, kind == HistoryKind.COMPENSATION_SENT.value)
            p.first_sent = p.first_sent or entry.at
            p.sends += 1
            p.result = _AWAITING.get(kind, "awaiting reply")
        elif kind == HistoryKind.SIGNAL_RECEIVED.value:
            p = phase(entry.step, False)
            p.replied, p.result = entry.at, "signal received"
        elif kind == HistoryKind.TIMED_OUT_DEFAULT.value:
            p = phase(entry.step, False)
            p.replied, p.result = entry.at, "timed out: default branch"
        elif kind in (HistoryKind.STEP_SUCCEEDED.value, HistoryKind.COMPENSATION_SUCCEEDED.value):
            p = phase(entry.step, kind == HistoryKind.COMPENSATION_SUCCEEDED.value)
            p.replied, p.result = entry.at, "succeeded"
        elif kind in (HistoryKind.STEP_FAILED.value, HistoryKind.COMPENSATION_FAILED.value):
            p = phase(entry.step, kind == HistoryKind.COMPENSATION_FAILED.value)
            if "outcome" in detail:
                p.replied = entry.at
            p.result = f"failed: {detail.get('error', '?')}"
        elif kind == HistoryKind.LATE_REPLY.value and "outcome" in detail:
            p = phase(entry.step, bool(detail.get("compensation")))
            p.replied = p.replied or entry.at
            p.result = f"late {detail['outcome']}"
    awaited = (instance.current_step, instance.status is not SagaStatus.RUNNING)
    for p in phases.values():
        if p.result in _AWAITING.values() and (
            (p.step, p.compensation) != awaited or instance.is_terminal
        ):
            p.result = "no reply"
    return list(phases.values())


def render_timeline(console: Console, timeline: SagaTimeline, now: datetime) -> None:
    """Print a saga's header, its history and its per-step summary."""
    inst = timeline.instance
    start = inst.created_at
    header = Table.grid(padding=(0, 2))
    header.add_column(style="dim", no_wrap=True)
    header.add_column()
    header.add_row("type", Text(f"{inst.saga_type} (definition v{inst.definition_version})"))
    header.add_row("status", _status(inst.status))
    step = inst.current_step or "-"
    if inst.current_step is not None and inst.status is not SagaStatus.RUNNING:
        step += " (compensation)"
    header.add_row("current step", Text(step))
    header.add_row("attempt", Text(f"{inst.attempt}   command {_short(inst.command_id)}"))
    if inst.current_step is not None and not inst.is_terminal:
        pickup = (
            f"picked up at {_clock_time(inst.picked_up_at)}"
            if inst.picked_up_at is not None
            else "not picked up yet (queued at the participant)"
        )
        header.add_row("pending", Text(f"{inst.service or '-'}: {pickup}"))
    if inst.in_doubt_step is not None:
        header.add_row(
            "in doubt",
            Text(
                f"{inst.in_doubt_step}: command {_short(inst.in_doubt_command_id)} may still "
                "run; its undo must be answered before the saga can end",
                style="yellow",
            ),
        )
    if inst.parent_saga_id is not None:
        header.add_row(
            "parent",
            Text(f"{inst.parent_saga_id} (its step {inst.parent_step or '?'})"),
        )
    for child in timeline.children:
        header.add_row(
            "child",
            Text.assemble(
                f"{child.saga_id} ({child.saga_type}, for {child.parent_step or '?'}) ",
                _status(child.status),
            ),
        )
    if inst.pending_signals:
        header.add_row(
            "kept signals",
            Text(
                ", ".join(f"{s.name} ({_short(s.message_id)})" for s in inst.pending_signals)
                + ": taken when their wait begins"
            ),
        )
    if inst.epoch:
        header.add_row("epoch", Text(f"{inst.epoch} (operator retries out of FAILED)"))
    header.add_row("deadline", _deadline(inst.deadline_at, now))
    if len(inst.awaiting) > 1:
        header.add_row(
            "awaiting",
            Text(
                "\n".join(
                    f"{e.step} ({e.kind.value}, attempt {e.attempt}, command "
                    f"{_short(e.command_id)}, due {_clock_time(e.deadline_at) if e.deadline_at else '-'})"
                    for e in inst.awaiting
                )
            ),
        )
    header.add_row("failure reason", Text(inst.failure_reason or "-", style="red"))
    header.add_row("completed", Text(", ".join(inst.completed_steps) or "-"))
    if inst.skipped_steps:
        header.add_row("skipped", Text(", ".join(inst.skipped_steps)))
    header.add_row("compensated", Text(", ".join(inst.compensated_steps) or "-"))
    header.add_row(
        "started",
        Text(f"{_clock_time(start)}   updated {_offset(inst.updated_at, start)}"),
    )
    console.print(Panel(header, title=Text(f"saga {inst.saga_id}", style="bold"), expand=False))

    history = Table(title="History", title_justify="left", show_lines=False)
    history.add_column("time", justify="right", no_wrap=True)
    history.add_column("kind", no_wrap=True)
    history.add_column("step", no_wrap=True)
    history.add_column("detail")
    for entry in timeline.history:
        history.add_row(
            _offset(entry.at, start),
            Text(entry.kind, style=_KIND_STYLE.get(entry.kind, "")),
            Text(entry.step or "-"),
            Text(summarize(entry.kind, entry.detail)),
        )
    console.print(history)

    steps = Table(title="Steps", title_justify="left")
    for name in ("step", "phase", "sent", "replied", "took"):
        steps.add_column(name, no_wrap=True)
    steps.add_column("sends", justify="right")
    steps.add_column("result")
    for p in step_phases(inst, timeline.history):
        took = "-"
        if p.first_sent is not None and p.replied is not None:
            took = _span((p.replied - p.first_sent).total_seconds())
        style = "red" if p.result.startswith("failed") else ""
        steps.add_row(
            Text(p.step),
            "compensation" if p.compensation else "forward",
            _offset(p.first_sent, start),
            _offset(p.replied, start),
            took,
            str(p.sends),
            Text(p.result, style=style),
        )
    console.print(steps)


def render_list(console: Console, sagas: list[SagaInstance], now: datetime, *, limit: int) -> None:
    """Print sagas as a table."""
    if not sagas:
        console.print("no sagas")
        return
    table = Table()
    for name in ("saga id", "type", "status", "step", "attempt", "age", "updated"):
        table.add_column(name, no_wrap=True)
    table.add_column("failure reason")
    for s in sagas:
        table.add_row(
            Text(s.saga_id),
            Text(s.saga_type),
            _status(s.status),
            Text(s.current_step or "-"),
            str(s.attempt),
            _span((now - s.created_at).total_seconds()),
            f"{_span((now - s.updated_at).total_seconds())} ago",
            Text(s.failure_reason or ""),
        )
    console.print(table)
    more = " (there may be more: use --offset)" if len(sagas) == limit else ""
    console.print(f"{len(sagas)} saga(s){more}")


def parked_as_dict(saga: ParkedSaga) -> dict[str, Any]:
    """A parked saga as JSON-ready data."""
    return {
        "saga_id": saga.saga_id,
        "saga_type": saga.saga_type,
        "definition_version": saga.definition_version,
        "parked_replies": saga.replies,
        "parked_since": saga.parked_since.isoformat(),
        "parked_by": saga.parked_by,
    }


def render_parked(console: Console, sagas: list[ParkedSaga], now: datetime) -> None:
    """Print parked sagas as a table."""
    if not sagas:
        console.print("no parked sagas")
        return
    table = Table()
    for name in ("saga id", "type", "version", "replies", "parked for", "parked by"):
        table.add_column(name, no_wrap=True)
    for s in sagas:
        table.add_row(
            Text(s.saga_id),
            Text(s.saga_type),
            str(s.definition_version),
            str(s.replies),
            _span((now - s.parked_since).total_seconds()),
            Text(s.parked_by),
        )
    console.print(table)
    console.print(
        f"{len(sagas)} parked saga(s): they resume once a coordinator that has their "
        "definition version runs"
    )


def render_action(console: Console, result: ActionResult) -> None:
    """Print what an operator action did (or would do)."""
    head = f"{result.action} of saga {result.saga_id} by {result.actor}: "
    if result.dry_run:
        head = f"dry run (nothing written or sent): {head}would go "
    console.print(
        Text.assemble(
            Text(head, style="bold yellow" if result.dry_run else ""),
            _status(result.status_before),
            " -> ",
            _status(result.status_after),
        )
    )
    if not result.changed:
        console.print("recorded in the saga's history; nothing else changed")
    if result.commands:
        verb = "would send" if result.dry_run else "queued in the outbox"
        table = Table(title=f"commands ({verb})", title_justify="left")
        for name in ("topic", "key", "type", "step", "command id", "attempt"):
            table.add_column(name, no_wrap=True)
        for c in result.commands:
            table.add_row(
                Text(c.topic),
                Text(c.key),
                Text(c.message_type),
                Text(c.step),
                Text(c.command_id),
                str(c.attempt),
            )
        console.print(table)
    else:
        console.print("no commands to send")
    if result.events:
        console.print(f"events: {', '.join(result.events)}")
    if result.commands and not result.dry_run:
        console.print(
            Text("a running coordinator publishes them within about a second", style="dim")
        )
