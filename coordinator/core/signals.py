"""Signals: named events from outside (an approval, say) for a saga's :class:`WaitForSignal`.

Pure, like :mod:`coordinator.core.machine`, which calls it. The rule for a signal:

* the saga awaits a wait for it: the payload is checked (``payload_model``), folded
  (``on_signal``) and the saga goes on (history ``signal_received``);
* else, while the saga is QUEUED or RUNNING and a wait for it lies ahead (a stage not reached
  yet): it is kept in ``SagaInstance.pending_signals`` (the latest per name wins; history
  ``signal_kept``) and consumed at once when the wait begins;
* otherwise (the saga ended, no wait for it, the wait passed, or an invalid payload) it is
  refused: ``Transition.rejection`` says why (``saga_terminal``, ``signal_not_awaited``,
  ``signal_invalid``), nothing changes but a ``signal_rejected`` history entry, and the
  runtime dead-letters it with that reason.

A signal kept for a wait whose ``run_if`` later says no is never consumed; it stays with the
saga, visible, and changes nothing.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from coordinator.core.definition import WaitForSignal
from coordinator.core.draft import TransitionDraft, describe
from coordinator.core.stages import fold_signal, keep_signal, succeed
from coordinator.core.state import (
    AwaitKind,
    HistoryKind,
    PendingSignal,
    SagaStatus,
    SignalReceived,
)

__all__ = ["REJECTIONS", "on_signal"]

REJECTIONS = ("signal_not_awaited", "signal_invalid", "saga_terminal")
"""The reasons a signal is refused (the ``rejection`` of a transition)."""


def on_signal(d: TransitionDraft, event: SignalReceived) -> None:
    """Apply, keep or refuse ``event`` (see the module docstring)."""
    inst = d.instance
    detail: dict[str, Any] = {"signal": event.name, "payload": dict(event.payload)}
    if inst.is_terminal:
        _reject(d, None, "saga_terminal", detail)
        return
    if inst.status is SagaStatus.RUNNING:
        for entry in inst.awaiting:
            unit = d.definition.unit(entry.step)
            if (
                entry.kind is AwaitKind.SIGNAL
                and isinstance(unit, WaitForSignal)
                and unit.signal == event.name
            ):
                folded = fold_signal(d, unit, event.payload)
                if isinstance(folded, str):
                    _reject(d, unit.name, "signal_invalid", {**detail, "error": folded})
                    return
                d.update(data=folded)
                succeed(d, unit.name, HistoryKind.SIGNAL_RECEIVED, **detail)
                return
    ahead = _wait_ahead(d, event.name)
    if ahead is None:
        _reject(d, None, "signal_not_awaited", detail)
        return
    if ahead.payload_model is not None:
        try:
            ahead.payload_model.model_validate(event.payload)
        except ValidationError as exc:
            _reject(d, ahead.name, "signal_invalid", {**detail, "error": describe(exc)})
            return
    keep_signal(d, PendingSignal(event.message_id, event.name, dict(event.payload)))
    d.record(HistoryKind.SIGNAL_KEPT, ahead.name, **detail)


def _wait_ahead(d: TransitionDraft, name: str) -> WaitForSignal[Any] | None:
    """The first wait for signal ``name`` the saga has not reached yet, if it may still."""
    inst = d.instance
    if inst.status is SagaStatus.QUEUED:
        first = 0
    elif inst.status is SagaStatus.RUNNING:
        first = inst.stage + 1
    else:
        return None
    for stage in d.definition.steps[first:]:
        if isinstance(stage, WaitForSignal) and stage.signal == name:
            return stage
    return None


def _reject(d: TransitionDraft, step: str | None, reason: str, detail: dict[str, Any]) -> None:
    d.record(HistoryKind.SIGNAL_REJECTED, step, **detail, reason=reason)
    d.rejection = reason
