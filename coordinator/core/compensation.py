"""The engine's backward half: undoing what was done, in reverse, and what may go wrong.

Pure, like :mod:`coordinator.core.machine`, which calls it. When a saga stops going forward,
every participant command still in flight is *given up*: its entry stays in
``SagaInstance.awaiting`` (kind ``forward``, no deadline) until its undo is sent. Those undos
come first, one at a time (a compensation, or a fence for a step without one, naming the
command so the participant refuses it if it has not run it yet). A child saga still running is
awaited instead: a saga cannot be fenced, but it always ends, and its end is applied like any
reply. Then ``completed_steps`` are undone in reverse, skipping steps without a compensation
(timers and waits have nothing to undo). A refused undo makes the saga FAILED on that step,
once nothing else it sent is still unanswered, so an operator sees the effect left behind and
``OperatorRetry`` resumes there.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from coordinator.core.definition import ChildSaga, Step
from coordinator.core.draft import TransitionDraft, as_data
from coordinator.core.state import (
    Awaited,
    AwaitKind,
    ChildStart,
    CommandPurpose,
    HistoryKind,
    LifecycleKind,
    ReplyReceived,
    SagaStatus,
    command_id_for,
)
from service_sdk.contract import Outcome

__all__ = [
    "begin_compensation",
    "compensate_next",
    "fail_compensation",
    "in_doubt_reply",
    "start_child_undo",
]


def begin_compensation(d: TransitionDraft, reason: str) -> None:
    """Stop going forward for ``reason`` and undo what was done.

    Participant commands still awaited are given up (undone first, as in doubt); timers and
    signal waits are dropped; child sagas still running stay awaited.
    """
    d.update(failure_reason=reason)
    kept: list[Awaited] = []
    for entry in d.instance.awaiting:
        if entry.kind is AwaitKind.FORWARD:
            kept.append(replace(entry, deadline_at=None, picked_up_at=None))
        elif entry.kind is AwaitKind.CHILD:
            kept.append(entry)
    d.set_awaiting(tuple(kept))
    compensate_next(d)


def _given_up(entry: Awaited) -> bool:
    return entry.kind is AwaitKind.FORWARD and entry.deadline_at is None


def compensate_next(d: TransitionDraft) -> None:
    """Send the next undo due, wait for what is still running, or finish as COMPENSATED.

    Commands given up come first: their undo settles them, so the saga never ends while one
    could still act. Then completed steps, newest first.
    """
    inst = d.instance
    if any(entry.deadline_at is not None for entry in inst.awaiting):
        _enter_compensating(d)  # a child saga still runs: its end decides what to undo
        return
    given_up = [entry for entry in inst.awaiting if _given_up(entry)]
    refused = [entry for entry in inst.awaiting if entry.is_undo]
    if refused and not given_up:
        _fail(d, refused[0].step, inst.failure_reason or "compensation failed")
        return
    if given_up:
        _enter_compensating(d)
        entry = given_up[0]
        d.send(
            d.definition.step(entry.step),
            compensation=True,
            attempt=1,
            purpose=CommandPurpose.COMPENSATION,
            compensates=entry.command_id,
        )
        return
    for name in reversed(inst.completed_steps):
        if name in inst.compensated_steps:
            continue
        unit = d.definition.unit(name)
        if isinstance(unit, Step) and unit.compensation is not None:
            _enter_compensating(d)
            d.send(unit, compensation=True, attempt=1, purpose=CommandPurpose.COMPENSATION)
            return
        if isinstance(unit, ChildSaga) and unit.compensation is not None:
            _enter_compensating(d)
            start_child_undo(d, unit, attempt=1, purpose=CommandPurpose.COMPENSATION)
            return
    d.update(status=SagaStatus.COMPENSATED)
    d.set_awaiting(())
    d.record(HistoryKind.COMPENSATED, None, reason=inst.failure_reason)
    d.emit(LifecycleKind.COMPENSATED, reason=inst.failure_reason)


def start_child_undo(
    d: TransitionDraft,
    unit: ChildSaga[Any],
    *,
    attempt: int,
    purpose: CommandPurpose,
    command_id: str | None = None,
) -> None:
    """Start the saga that undoes ``unit``'s completed child (again, on a re-send)."""
    comp = unit.compensation
    assert comp is not None
    inst = d.instance
    saga_id = command_id or command_id_for(
        inst.saga_id, unit.name, compensation=True, epoch=inst.epoch
    )
    data = d.build(unit.name, lambda model: as_data(comp.build(model)), None)
    d.child_starts.append(
        ChildStart(comp.saga_type, saga_id, data, inst.saga_id, unit.name, attempt)
    )
    deadline = d.now + comp.timeout
    d.put(Awaited(unit.name, saga_id, attempt, deadline, kind=AwaitKind.CHILD_COMPENSATION))
    d.record(
        HistoryKind.COMPENSATION_SENT,
        unit.name,
        command_id=saga_id,
        attempt=attempt,
        purpose=purpose.value,
        saga_type=comp.saga_type,
        deadline_at=deadline.isoformat(),
    )


def _enter_compensating(d: TransitionDraft) -> None:
    if d.instance.status is not SagaStatus.COMPENSATING:
        d.update(status=SagaStatus.COMPENSATING)
        d.emit(LifecycleKind.COMPENSATING, reason=d.instance.failure_reason)


def in_doubt_reply(
    d: TransitionDraft, step: Step[Any], entry: Awaited, reply: ReplyReceived, seen: dict[str, Any]
) -> None:
    """The undo of a step in doubt succeeded: its command is settled one way or the other.

    A compensation answers after undoing the effect, or with ``fenced: true`` when the command
    never ran (the participant now refuses it for good). A fence of a step without a
    compensation reports ``fenced: false`` when the command had run: that effect cannot be
    undone, and an operator must decide.
    """
    fenced = reply.payload.get("fenced") is True
    executed = reply.payload.get("executed")
    if step.compensation is None and not fenced and executed == Outcome.SUCCESS.value:
        reason = f"{step.name} took effect after the saga gave up on it, and it has no compensation"
        d.record(
            HistoryKind.COMPENSATION_FAILED, step.name, **{**seen, "error": reason, "fence": True}
        )
        # Kept without a deadline (an operator decides), no longer in doubt: it is settled.
        d.put(replace(entry, deadline_at=None, compensates=None))
        d.update(failure_reason=reason)
        compensate_next(d)
        return
    d.drop(step.name)
    d.update(compensated_steps=(*d.instance.compensated_steps, step.name))
    d.record(HistoryKind.COMPENSATION_SUCCEEDED, step.name, **seen, in_doubt=True, fenced=fenced)
    compensate_next(d)


def fail_compensation(d: TransitionDraft, step: str, error: str, /, **detail: Any) -> None:
    """Give up on ``step``'s undo: the saga is FAILED until an operator acts (once every
    command given up is fenced and every child saga still running has ended)."""
    # The entry stays, without a deadline, so an operator retry knows what to re-send.
    reason = f"compensation of {step} failed: {error}"
    d.record(HistoryKind.COMPENSATION_FAILED, step, **{**detail, "error": error})
    entry = next(e for e in d.instance.awaiting if e.step == step)
    d.put(replace(entry, deadline_at=None))
    d.update(failure_reason=reason)
    # Commands given up are still fenced, and children still running awaited, first.
    compensate_next(d)


def _fail(d: TransitionDraft, step: str | None, reason: str) -> None:
    d.update(status=SagaStatus.FAILED, failure_reason=reason)
    d.record(HistoryKind.FAILED, step, reason=reason)
    d.emit(LifecycleKind.FAILED, step, reason=reason)
