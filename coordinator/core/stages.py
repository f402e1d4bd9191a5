"""The engine's forward half: entering the next stage of a saga.

Pure, like :mod:`coordinator.core.machine`, which calls it. A stage whose ``run_if`` says no is
skipped (history ``step_skipped``; nothing to compensate). A :class:`Step` sends its command;
a :class:`Parallel` group sends every member's at once and awaits them all; a :class:`Timer`
awaits its fire time as the saga's deadline; a :class:`WaitForSignal` consumes a signal kept
for it or awaits one until its timeout; a :class:`ChildSaga` asks the runtime to start the
child (a :class:`ChildStart`) and awaits its end as a reply to the child's saga id.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from coordinator.core.definition import ChildSaga, Parallel, Step, Timer, WaitForSignal
from coordinator.core.draft import TransitionDraft, as_data, describe
from coordinator.core.errors import SagaDefinitionError
from coordinator.core.state import (
    Awaited,
    AwaitKind,
    ChildStart,
    CommandPurpose,
    HistoryKind,
    LifecycleKind,
    PendingSignal,
    SagaStatus,
    command_id_for,
)

__all__ = ["advance", "fold_signal", "keep_signal", "start_child", "succeed", "wants"]


def wants(d: TransitionDraft, name: str, run_if: Callable[[Any], bool] | None) -> bool:
    """Whether ``run_if`` lets the stage run on the current data (no predicate: yes).

    Raises:
        SagaDefinitionError: The predicate raised.
    """
    if run_if is None:
        return True
    try:
        return bool(run_if(d.data()))
    except Exception as exc:
        raise SagaDefinitionError(
            f"{name}: run_if failed: {describe(exc)}", saga_id=d.instance.saga_id, step=name
        ) from exc


def _skip(d: TransitionDraft, name: str) -> None:
    d.update(skipped_steps=(*d.instance.skipped_steps, name))
    d.record(HistoryKind.STEP_SKIPPED, name)


def succeed(d: TransitionDraft, name: str, kind: HistoryKind, **detail: Any) -> None:
    """``name`` (a timer, a wait) ended well: record it and move on when its stage is done."""
    d.drop(name)
    d.update(completed_steps=(*d.instance.completed_steps, name))
    d.record(kind, name, **detail)
    d.emit(LifecycleKind.STEP_COMPLETED, name)
    advance(d)


def advance(d: TransitionDraft) -> None:
    """Enter the next stage once nothing of the current one is awaited; COMPLETED after the
    last."""
    if d.instance.awaiting:
        return  # members of a parallel group still run
    steps = d.definition.steps
    index = d.instance.stage + 1
    while index < len(steps):
        d.update(stage=index)
        if _enter(d, steps[index]):
            return
        index += 1
    d.update(status=SagaStatus.COMPLETED, stage=len(steps) - 1)
    d.set_awaiting(())
    d.record(HistoryKind.COMPLETED, None)
    d.emit(LifecycleKind.COMPLETED)


def _enter(d: TransitionDraft, stage: Any) -> bool:
    """Start ``stage``; False when it is already over (skipped, or a signal kept for it)."""
    if not wants(d, stage.name, stage.run_if):
        _skip(d, stage.name)
        return False
    if isinstance(stage, Step):
        d.send(stage, compensation=False, attempt=1, purpose=CommandPurpose.FORWARD)
        return True
    if isinstance(stage, Parallel):
        for member in stage.steps:
            if wants(d, member.name, member.run_if):
                d.send(member, compensation=False, attempt=1, purpose=CommandPurpose.FORWARD)
            else:
                _skip(d, member.name)
        return bool(d.instance.awaiting)
    if isinstance(stage, Timer):
        _set_timer(d, stage)
        return True
    if isinstance(stage, WaitForSignal):
        return _begin_wait(d, stage)
    assert isinstance(stage, ChildSaga)
    start_child(d, stage, attempt=1)
    return True


def _unit_id(d: TransitionDraft, name: str) -> str:
    inst = d.instance
    return command_id_for(inst.saga_id, name, compensation=False, epoch=inst.epoch)


def _set_timer(d: TransitionDraft, timer: Timer[Any]) -> None:
    data = d.data()
    try:
        if timer.delay is not None:
            delay = timer.delay(data)
            if not isinstance(delay, timedelta):
                raise TypeError(f"delay returned {type(delay).__name__}, expected timedelta")
            fire_at = d.now + max(delay, timedelta(0))
        else:
            assert timer.until is not None
            until = timer.until(data)
            if not isinstance(until, datetime) or until.tzinfo is None:
                raise TypeError(f"until returned {until!r}, expected an aware datetime")
            fire_at = until
    except Exception as exc:
        raise SagaDefinitionError(
            f"{timer.name}: computing the fire time failed: {describe(exc)}",
            saga_id=d.instance.saga_id,
            step=timer.name,
        ) from exc
    entry = Awaited(timer.name, _unit_id(d, timer.name), 1, fire_at, kind=AwaitKind.TIMER)
    d.put(entry)
    d.record(HistoryKind.TIMER_SET, timer.name, fire_at=fire_at.isoformat())


def _begin_wait(d: TransitionDraft, wait: WaitForSignal[Any]) -> bool:
    kept = next((s for s in d.instance.pending_signals if s.name == wait.signal), None)
    if kept is not None:
        d.update(pending_signals=tuple(s for s in d.instance.pending_signals if s is not kept))
        folded = fold_signal(d, wait, kept.payload)
        if isinstance(folded, dict):
            d.update(data=folded, completed_steps=(*d.instance.completed_steps, wait.name))
            d.record(
                HistoryKind.SIGNAL_RECEIVED,
                wait.name,
                signal=kept.name,
                signal_id=kept.message_id,
                payload=dict(kept.payload),
                kept=True,
            )
            d.emit(LifecycleKind.STEP_COMPLETED, wait.name)
            return False
        # Checked when it was kept; only on_signal over today's data can refuse it now.
        d.record(HistoryKind.SIGNAL_REJECTED, wait.name, signal=kept.name, reason=folded)
    deadline = d.now + wait.timeout
    d.put(Awaited(wait.name, _unit_id(d, wait.name), 1, deadline, kind=AwaitKind.SIGNAL))
    d.record(
        HistoryKind.SIGNAL_AWAITED, wait.name, signal=wait.signal, deadline_at=deadline.isoformat()
    )
    return True


def fold_signal(
    d: TransitionDraft, wait: WaitForSignal[Any], payload: dict[str, Any]
) -> dict[str, Any] | str:
    """The saga data with a signal folded in, or (a str) why the signal is invalid."""
    value: Any = payload
    if wait.payload_model is not None:
        try:
            value = wait.payload_model.model_validate(payload)
        except ValidationError as exc:
            return f"invalid payload: {describe(exc)}"
    if wait.on_signal is None:
        return d.instance.data
    try:
        folded = d.definition.data_model.model_validate(wait.on_signal(d.data(), value))
    except Exception as exc:
        return f"on_signal failed: {describe(exc)}"
    return folded.model_dump(mode="json")


def keep_signal(d: TransitionDraft, signal: PendingSignal) -> None:
    """Keep ``signal`` for a wait ahead; the latest per name wins."""
    others = tuple(s for s in d.instance.pending_signals if s.name != signal.name)
    d.update(pending_signals=(*others, signal))


def start_child(
    d: TransitionDraft, child: ChildSaga[Any], *, attempt: int, purpose: str = "forward"
) -> None:
    """Ask the runtime to start ``child``'s saga (again, on a re-send) and await its end."""
    inst = d.instance
    saga_id = _unit_id(d, child.name)
    data = d.build(child.name, lambda model: as_data(child.build(model)), None)
    d.child_starts.append(
        ChildStart(child.saga_type, saga_id, data, inst.saga_id, child.name, attempt)
    )
    deadline = d.now + child.timeout
    d.put(Awaited(child.name, saga_id, attempt, deadline, kind=AwaitKind.CHILD))
    d.record(
        HistoryKind.CHILD_STARTED,
        child.name,
        command_id=saga_id,
        attempt=attempt,
        purpose=purpose,
        saga_type=child.saga_type,
        deadline_at=deadline.isoformat(),
    )
