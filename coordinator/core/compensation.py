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
from coordinator.core.draft import TransitionDraft, retry_policy
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
    "late_compensation_reply",
    "late_success",
]


def begin_compensation(d: TransitionDraft, reason: str) -> None:
    """Stop going forward for ``reason`` and undo what was done."""
    d.update(failure_reason=reason)
    compensate_next(d)


def compensate_next(d: TransitionDraft) -> None:
    """Send the next compensation due, or finish as COMPENSATED when none is left."""
    inst = d.instance
    pending = [
        name
        for name in reversed(inst.completed_steps)
        if name not in inst.compensated_steps and d.definition.step(name).compensation is not None
    ]
    if pending:
        if inst.status is not SagaStatus.COMPENSATING:
            d.update(status=SagaStatus.COMPENSATING)
            d.emit(LifecycleKind.COMPENSATING, reason=inst.failure_reason)
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


def fail_compensation(d: TransitionDraft, step: Step[Any], error: str, /, **detail: Any) -> None:
    """Give up on ``step``'s compensation: the saga is FAILED until an operator acts."""
    # current_step and command_id stay, so an operator retry knows what to re-send.
    reason = f"compensation of {step.name} failed: {error}"
    d.record(HistoryKind.COMPENSATION_FAILED, step.name, **{**detail, "error": error})
    d.update(status=SagaStatus.FAILED, failure_reason=reason, deadline_at=None)
    d.record(HistoryKind.FAILED, step.name, reason=reason)
    d.emit(LifecycleKind.FAILED, step.name, reason=reason)


def late_success(
    d: TransitionDraft, step: Step[Any], reply: ReplyReceived, seen: dict[str, Any]
) -> None:
    """The participant did the work after the saga gave up on it: undo it, if it can be."""
    problem = None
    if step.compensation is not None:
        # Folding the reply in gives the compensation what it may need, e.g. a charge id.
        data = d.fold(step, reply.payload)
        if isinstance(data, str):
            problem = data
        else:
            d.update(data=data)
    d.record(
        HistoryKind.LATE_REPLY,
        step.name,
        **seen,
        compensate=step.compensation is not None,
        problem=problem,
    )
    if step.compensation is not None:
        d.send(step, compensation=True, attempt=1, purpose=CommandPurpose.COMPENSATION, track=False)


def late_compensation_reply(
    d: TransitionDraft, step: Step[Any], reply: ReplyReceived, seen: dict[str, Any]
) -> None:
    """A reply to a fire-and-forget compensation sent after a late success."""
    d.record(HistoryKind.LATE_REPLY, step.name, **seen, compensation=True)
    inst = d.instance
    if reply.outcome is Outcome.SUCCESS or step.name == inst.current_step:
        return  # undone; or an operator's retry of this very compensation is awaited now
    policy = retry_policy(step, compensation=True)
    if reply.outcome is Outcome.RETRYABLE and reply.attempt < policy.max_attempts:
        d.send(
            step,
            compensation=True,
            attempt=reply.attempt + 1,
            purpose=CommandPurpose.RETRY,
            track=False,
            command_id=reply.command_id,
        )
        return
    error = reply.error or reply.outcome.value
    if inst.status is SagaStatus.FAILED:
        # Already waiting for an operator on another step; the history keeps this one.
        d.record(HistoryKind.COMPENSATION_FAILED, step.name, error=error, late=True)
        return
    # A compensation in flight is abandoned; an operator's retry resumes with it (new epoch).
    d.update(current_step=step.name, command_id=reply.command_id, attempt=reply.attempt)
    fail_compensation(d, step, error, late=True)
