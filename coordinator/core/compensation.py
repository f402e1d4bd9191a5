"""The engine's backward half: undoing completed steps, in reverse, and what may go wrong.

Pure, like :mod:`coordinator.core.machine`, which calls it. Compensation undoes ``completed_steps``
in reverse order, skipping steps without a compensation; the step that failed or was abandoned
is not undone, because it did not happen, unless its participant later reports that it did
(a *late success*). Then that step's compensation is sent fire-and-forget: there is no deadline
for it and the history is the record. If the participant refuses it, the saga becomes FAILED
on that step, so an operator sees the effect left behind and ``OperatorRetry`` resumes there.
"""

from __future__ import annotations

from typing import Any

from coordinator.core.definition import Step
from coordinator.core.draft import TransitionDraft
from coordinator.core.state import (
    CommandPurpose,
    HistoryKind,
    LifecycleKind,
    ReplyReceived,
    SagaStatus,
)
from service_sdk.contract import Outcome

__all__ = [
    "begin_compensation",
    "compensate_next",
    "fail_compensation",
    "in_doubt_reply",
    "mark_in_doubt",
]


def begin_compensation(d: TransitionDraft, reason: str) -> None:
    """Stop going forward for ``reason`` and undo what was done."""
    d.update(failure_reason=reason)
    compensate_next(d)


def mark_in_doubt(d: TransitionDraft) -> None:
    """The awaited forward command may still take effect: it is undone before anything else."""
    inst = d.instance
    d.update(in_doubt_step=inst.current_step, in_doubt_command_id=inst.command_id)


def compensate_next(d: TransitionDraft) -> None:
    """Send the next compensation due, or finish as COMPENSATED when none is left.

    A step in doubt comes first: its compensation (or a fence, when it has none) settles the
    command the saga gave up on, so the saga never ends while that command could still act.
    """
    inst = d.instance
    if inst.in_doubt_step is not None:
        _enter_compensating(d)
        d.send(
            d.definition.step(inst.in_doubt_step),
            compensation=True,
            attempt=1,
            purpose=CommandPurpose.COMPENSATION,
        )
        return
    pending = [
        name
        for name in reversed(inst.completed_steps)
        if name not in inst.compensated_steps and d.definition.step(name).compensation is not None
    ]
    if pending:
        _enter_compensating(d)
        step = d.definition.step(pending[0])
        d.send(step, compensation=True, attempt=1, purpose=CommandPurpose.COMPENSATION)
        return
    d.update(
        status=SagaStatus.COMPENSATED,
        current_step=None,
        command_id=None,
        attempt=0,
        deadline_at=None,
    )
    d.record(HistoryKind.COMPENSATED, None, reason=inst.failure_reason)
    d.emit(LifecycleKind.COMPENSATED, reason=inst.failure_reason)


def _enter_compensating(d: TransitionDraft) -> None:
    if d.instance.status is not SagaStatus.COMPENSATING:
        d.update(status=SagaStatus.COMPENSATING)
        d.emit(LifecycleKind.COMPENSATING, reason=d.instance.failure_reason)


def in_doubt_reply(
    d: TransitionDraft, step: Step[Any], reply: ReplyReceived, seen: dict[str, Any]
) -> None:
    """The undo of the step in doubt succeeded: its command is settled one way or the other.

    A compensation answers after undoing the effect, or with ``fenced: true`` when the command
    never ran (the participant now refuses it for good). A fence of a step without a
    compensation reports ``fenced: false`` when the command had run: that effect cannot be
    undone, and an operator must decide.
    """
    fenced = reply.payload.get("fenced") is True
    executed = reply.payload.get("executed")
    if step.compensation is None and not fenced and executed == Outcome.SUCCESS.value:
        reason = f"{step.name} took effect after the saga gave up on it, and it has no compensation"
        d.record(HistoryKind.COMPENSATION_FAILED, step.name, **seen, error=reason, fence=True)
        d.update(
            status=SagaStatus.FAILED,
            failure_reason=reason,
            deadline_at=None,
            in_doubt_step=None,
            in_doubt_command_id=None,
        )
        d.record(HistoryKind.FAILED, step.name, reason=reason)
        d.emit(LifecycleKind.FAILED, step.name, reason=reason)
        return
    d.update(
        compensated_steps=(*d.instance.compensated_steps, step.name),
        in_doubt_step=None,
        in_doubt_command_id=None,
    )
    d.record(HistoryKind.COMPENSATION_SUCCEEDED, step.name, **seen, in_doubt=True, fenced=fenced)
    compensate_next(d)


def fail_compensation(d: TransitionDraft, step: Step[Any], error: str, /, **detail: Any) -> None:
    """Give up on ``step``'s compensation: the saga is FAILED until an operator acts."""
    # current_step and command_id stay, so an operator retry knows what to re-send.
    reason = f"compensation of {step.name} failed: {error}"
    d.record(HistoryKind.COMPENSATION_FAILED, step.name, **{**detail, "error": error})
    d.update(status=SagaStatus.FAILED, failure_reason=reason, deadline_at=None)
    d.record(HistoryKind.FAILED, step.name, reason=reason)
    d.emit(LifecycleKind.FAILED, step.name, reason=reason)
