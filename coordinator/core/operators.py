"""Operator actions on a saga: abort (compensate now) and retry (send again, or resume a
FAILED saga). Pure, like :mod:`coordinator.core.machine`, which calls it; the action itself is
recorded in the saga's history.
"""

from __future__ import annotations

from coordinator.core.compensation import begin_compensation, start_child_undo
from coordinator.core.definition import ChildSaga, Step
from coordinator.core.draft import TransitionDraft
from coordinator.core.errors import InvalidOperatorActionError
from coordinator.core.stages import start_child
from coordinator.core.state import (
    AwaitKind,
    CommandPurpose,
    HistoryKind,
    LifecycleKind,
    OperatorAbort,
    OperatorRetry,
    SagaStatus,
)

__all__ = ["on_abort", "on_retry"]

_COMMANDS = (AwaitKind.FORWARD, AwaitKind.COMPENSATION)


def on_abort(d: TransitionDraft, event: OperatorAbort) -> None:
    """Stop a QUEUED or RUNNING saga and undo what it did; recorded and ignored while it
    compensates.

    Raises:
        InvalidOperatorActionError: The saga is terminal.
    """
    inst = d.instance
    if inst.is_terminal:
        raise InvalidOperatorActionError(
            f"cannot abort a {inst.status.value} saga", saga_id=inst.saga_id, step=inst.current_step
        )
    running = inst.status in (SagaStatus.RUNNING, SagaStatus.QUEUED)
    d.record(
        HistoryKind.OPERATOR_ACTION,
        inst.current_step,
        actor=event.actor,
        action="abort",
        reason=event.reason,
        ignored=not running,
    )
    if running:
        # Commands in flight may still take effect: they are undone (or fenced) first.
        begin_compensation(d, f"aborted by {event.actor}: {event.reason}")


def on_retry(d: TransitionDraft, event: OperatorRetry) -> None:
    """Re-send what an active saga awaits (same ids, next attempts), or resume a FAILED saga
    at its refused undos.

    Raises:
        InvalidOperatorActionError: The saga is COMPLETED or COMPENSATED, or awaits nothing.
    """
    inst = d.instance
    if not inst.awaiting or inst.status in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED):
        raise InvalidOperatorActionError(
            f"cannot retry a {inst.status.value} saga", saga_id=inst.saga_id, step=inst.current_step
        )
    if inst.status is SagaStatus.FAILED:
        _retry_failed(d, event)
        return
    d.record(
        HistoryKind.OPERATOR_ACTION,
        inst.current_step,
        actor=event.actor,
        action="retry",
        reason=event.reason,
    )
    for entry in inst.awaiting:
        if entry.deadline_at is None:
            continue  # given up: its undo comes in turn
        unit = d.definition.unit(entry.step)
        if isinstance(unit, Step) and entry.kind in _COMMANDS:
            # No final answer is recorded for the awaited command (it would have moved the
            # saga on), so the same id is safe and keeps a participant that did act from
            # acting twice.
            d.send(
                unit,
                compensation=entry.is_undo,
                attempt=entry.attempt + 1,
                purpose=CommandPurpose.RETRY,
                command_id=entry.command_id,
                compensates=entry.compensates,
            )
        elif isinstance(unit, ChildSaga) and entry.kind is AwaitKind.CHILD:
            start_child(d, unit, attempt=entry.attempt + 1, purpose=CommandPurpose.RETRY.value)
        elif isinstance(unit, ChildSaga):
            start_child_undo(
                d,
                unit,
                attempt=entry.attempt + 1,
                purpose=CommandPurpose.RETRY,
                command_id=entry.command_id,
            )


def _retry_failed(d: TransitionDraft, event: OperatorRetry) -> None:
    """Resume a FAILED saga at its refused undos, with a fresh retry budget and a new epoch
    (so new command ids: the participant answers the old ones from its record of the
    refusal)."""
    inst = d.instance
    refused = [entry for entry in inst.awaiting if entry.is_undo]
    for entry in refused:
        unit = d.definition.unit(entry.step)
        if isinstance(unit, Step) and unit.compensation is None and entry.compensates is None:
            raise InvalidOperatorActionError(
                f"{unit.name} took effect and has no compensation: there is nothing to retry",
                saga_id=inst.saga_id,
                step=unit.name,
            )
    d.record(
        HistoryKind.OPERATOR_ACTION,
        inst.current_step,
        actor=event.actor,
        action="retry",
        reason=event.reason,
    )
    d.update(status=SagaStatus.COMPENSATING, epoch=inst.epoch + 1)
    d.emit(LifecycleKind.COMPENSATING, reason=inst.failure_reason)
    for entry in refused:
        unit = d.definition.unit(entry.step)
        if isinstance(unit, ChildSaga):
            start_child_undo(d, unit, attempt=1, purpose=CommandPurpose.RETRY)
        else:
            assert isinstance(unit, Step)
            d.send(
                unit,
                compensation=True,
                attempt=1,
                purpose=CommandPurpose.RETRY,
                compensates=entry.compensates,
            )
