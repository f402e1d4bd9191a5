"""A saga's history as a Gantt chart: every attempt of every command its own bar.

:func:`attempts` reads the history into :class:`Attempt` records (sent, picked up where a
heartbeat saw it, answered, deadline, outcome); :func:`chart` lays them out in SVG
coordinates, which the ``saga.html`` template draws as inline SVG. Both are pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from coordinator.core.state import HistoryKind, SagaInstance
from coordinator.store.records import HistoryRecord

__all__ = ["Attempt", "Bar", "Chart", "Marker", "attempts", "chart"]

_SENT = {
    HistoryKind.COMMAND_SENT.value,
    HistoryKind.COMPENSATION_SENT.value,
    HistoryKind.CHILD_STARTED.value,
}
# Waits without a command: a timer from set to fired, a signal wait from awaited to received
# (or its timeout), each its own row keyed by its step.
_WAIT_OPENS = {HistoryKind.TIMER_SET.value: "timer", HistoryKind.SIGNAL_AWAITED.value: "signal"}
_WAIT_ENDS = {
    HistoryKind.TIMER_FIRED.value: "succeeded",
    HistoryKind.SIGNAL_RECEIVED.value: "succeeded",
    HistoryKind.TIMED_OUT_DEFAULT.value: "succeeded",
    HistoryKind.DEADLINE_MISSED.value: "timed_out",
}
_PREFIX = {"timer": "◔ ", "signal": "✉ ", "child": "⇢ "}
_ENDS = {
    HistoryKind.STEP_SUCCEEDED.value: "succeeded",
    HistoryKind.COMPENSATION_SUCCEEDED.value: "succeeded",
    HistoryKind.STEP_FAILED.value: "failed",
    HistoryKind.COMPENSATION_FAILED.value: "failed",
    HistoryKind.STEP_RETRYABLE_FAILURE.value: "retryable",
    HistoryKind.DEADLINE_MISSED.value: "timed_out",
    HistoryKind.COMMAND_UNSENDABLE.value: "unsendable",
}


def _time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


@dataclass
class Attempt:
    """One send of one command and what became of it.

    Attributes:
        purpose: What the history records (``forward``, ``retry``, ``compensation``,
            ``fence``, ...).
        outcome: ``pending`` until answered; then ``succeeded``, ``failed``, ``retryable``
            (failed, will be sent again), ``timed_out``, ``unsendable``, or ``abandoned``
            (the saga moved on without an answer).
    """

    step: str
    command_id: str
    attempt: int
    purpose: str
    message_type: str | None
    sent_at: datetime
    deadline_at: datetime | None
    compensating: bool = False
    """A compensation or a fence (it undoes the step), not the step's own command."""
    picked_up_at: datetime | None = None
    answered_at: datetime | None = None
    outcome: str = "pending"
    error: str | None = None
    kind: str = "command"
    """``command``; ``child`` (a child saga's start and end); ``timer`` or ``signal`` (a
    wait: no command, ``command_id`` is empty)."""


def attempts(history: Sequence[HistoryRecord], instance: SagaInstance) -> list[Attempt]:
    """Every command send in the history, in order, with its answer where there is one."""
    found: list[Attempt] = []
    by_key: dict[tuple[str, int], Attempt] = {}
    waits: dict[str, Attempt] = {}
    for record in history:
        detail = record.detail
        if record.kind in _WAIT_OPENS and record.step:
            opened = Attempt(
                step=record.step,
                command_id="",
                attempt=1,
                purpose="wait",
                message_type=detail.get("signal"),
                sent_at=record.at,
                deadline_at=_time(detail.get("fire_at") or detail.get("deadline_at")),
                kind=_WAIT_OPENS[record.kind],
            )
            found.append(opened)
            waits[record.step] = opened
            continue
        wait = waits.get(record.step or "")
        if wait is not None and record.kind in _WAIT_ENDS and wait.answered_at is None:
            wait.answered_at = record.at
            wait.outcome = _WAIT_ENDS[record.kind]
            continue
        command_id = detail.get("command_id")
        attempt_no = detail.get("attempt")
        if record.kind in _SENT and isinstance(command_id, str) and isinstance(attempt_no, int):
            sent = Attempt(
                step=record.step or "?",
                command_id=command_id,
                attempt=attempt_no,
                purpose=str(detail.get("purpose") or "forward"),
                message_type=detail.get("message_type"),
                sent_at=record.at,
                deadline_at=_time(detail.get("deadline_at")),
                compensating=record.kind == HistoryKind.COMPENSATION_SENT.value,
                kind="child" if record.kind == HistoryKind.CHILD_STARTED.value else "command",
            )
            found.append(sent)
            by_key[(command_id, attempt_no)] = sent
            continue
        if not isinstance(command_id, str):
            continue
        target = by_key.get((command_id, attempt_no)) if isinstance(attempt_no, int) else None
        if target is None:
            # A reply may name an earlier attempt of the same command: the latest one open.
            target = next(
                (
                    a
                    for a in reversed(found)
                    if a.command_id == command_id and a.answered_at is None
                ),
                None,
            )
        if target is None:
            continue
        if record.kind == HistoryKind.COMMAND_PICKED_UP.value:
            target.picked_up_at = record.at
            target.deadline_at = _time(detail.get("deadline_at")) or target.deadline_at
        elif record.kind == HistoryKind.DEADLINE_POSTPONED.value:
            target.deadline_at = _time(detail.get("deadline_at")) or target.deadline_at
        elif record.kind in _ENDS and target.answered_at is None:
            target.answered_at = record.at
            target.outcome = _ENDS[record.kind]
            error = detail.get("error")
            target.error = str(error) if error is not None else None
    # Several inside a parallel group: each awaited attempt is still pending.
    awaited: set[tuple[str | None, int]] = {(e.command_id, e.attempt) for e in instance.awaiting}
    awaited.add((instance.command_id, instance.attempt))
    waiting = {e.step for e in instance.awaiting}
    for a in found:
        if a.answered_at is not None:
            continue
        if a.kind in ("timer", "signal"):
            if a.step not in waiting:
                a.outcome = "abandoned"  # the saga gave up waiting (aborted, say)
        elif (a.command_id, a.attempt) not in awaited:
            a.outcome = "abandoned"  # resent, aborted or superseded without an answer
    return found


@dataclass(frozen=True)
class Bar:
    """One attempt's row: label, the bar's segments and the deadline tick, in SVG units."""

    label: str
    y: float
    x: float
    width: float
    queued_width: float
    """The part from sending to pickup (the command waited in a queue), drawn lighter."""
    deadline_x: float | None
    outcome: str
    compensating: bool
    title: str


@dataclass(frozen=True)
class Marker:
    """A vertical line at an instant: an operator action or the saga's end."""

    x: float
    label: str
    kind: str


@dataclass(frozen=True)
class Chart:
    """The Gantt chart's geometry (``width`` by ``height``; the plot starts at ``plot_x``)."""

    width: float
    height: float
    plot_x: float
    row_height: float
    bars: list[Bar] = field(default_factory=list)
    ticks: list[tuple[float, str]] = field(default_factory=list)
    markers: list[Marker] = field(default_factory=list)
    now_x: float | None = None


def _span_label(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


def chart(
    history: Sequence[HistoryRecord],
    instance: SagaInstance,
    now: datetime,
    *,
    width: float = 960.0,
    label_width: float = 230.0,
    row_height: float = 24.0,
) -> Chart:
    """Lay out the saga's attempts as bars on one time axis (from start to now or the end)."""
    found = attempts(history, instance)
    start = instance.created_at
    instants = [start] + [r.at for r in history]
    active = not instance.is_terminal
    if active:
        instants.append(now)
        instants.extend(a.deadline_at for a in found if a.outcome == "pending" and a.deadline_at)
    end = max(instants)
    span = max((end - start).total_seconds(), 0.001)
    top = 24.0
    plot_width = width - label_width - 40  # room for the last tick's label

    def x_of(at: datetime) -> float:
        offset = (at - start).total_seconds() / span
        return label_width + max(0.0, min(offset, 1.0)) * plot_width

    bars: list[Bar] = []
    for row, a in enumerate(found):
        stop = a.answered_at or (now if a.outcome == "pending" else a.sent_at)
        x0, x1 = x_of(a.sent_at), x_of(stop)
        picked = x_of(a.picked_up_at) if a.picked_up_at else None
        arrow = "↩ " if a.compensating else _PREFIX.get(a.kind, "")
        kind = "fence" if a.purpose == "fence" else ("undo" if a.compensating else "")
        took = (stop - a.sent_at).total_seconds()
        if a.kind in ("timer", "signal"):
            what = f"signal {a.message_type!r}" if a.kind == "signal" else "timer"
            lines = [f"{a.step}: {what}, {a.outcome}", f"waiting since {a.sent_at.isoformat()}"]
        else:
            lines = [
                f"{a.step} {kind} attempt {a.attempt}: {a.outcome}".replace("  ", " "),
                f"child saga {a.command_id}"
                if a.kind == "child"
                else f"command {a.command_id} ({a.message_type or '?'})",
                f"sent {a.sent_at.isoformat()}",
            ]
        if a.picked_up_at:
            lines.append(f"picked up {a.picked_up_at.isoformat()}")
        if a.answered_at:
            lines.append(f"answered {a.answered_at.isoformat()} after {_span_label(took)}")
        if a.deadline_at:
            lines.append(f"deadline {a.deadline_at.isoformat()}")
        if a.error:
            lines.append(f"error: {a.error}")
        bars.append(
            Bar(
                label=f"{arrow}{a.step} #{a.attempt}",
                y=top + row * row_height,
                x=x0,
                width=max(x1 - x0, 3.0),
                queued_width=max(picked - x0, 0.0) if picked is not None else 0.0,
                deadline_x=x_of(a.deadline_at) if a.deadline_at and a.deadline_at <= end else None,
                outcome=a.outcome,
                compensating=a.compensating,
                title="\n".join(lines),
            )
        )
    markers = [
        Marker(
            x=x_of(r.at),
            label=f"{r.detail.get('action', 'action')} by {r.detail.get('actor', '?')}",
            kind="operator",
        )
        for r in history
        if r.kind == HistoryKind.OPERATOR_ACTION.value
    ]
    if instance.is_terminal:
        markers.append(Marker(x=x_of(end), label=instance.status.value, kind="end"))
    ticks = [(label_width + plot_width * i / 4, _span_label(span * i / 4)) for i in range(5)]
    height = top + max(len(found), 1) * row_height + 8
    return Chart(
        width=width,
        height=height,
        plot_x=label_width,
        row_height=row_height,
        bars=bars,
        ticks=ticks,
        markers=markers,
        now_x=x_of(now) if active else None,
    )
