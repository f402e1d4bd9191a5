"""The saga state machine: ``(definition, instance, input, now) -> Transition``, nothing else.

Nothing here does I/O, reads the clock or draws random numbers: time and the retry jitter come
in as arguments, so every branch is testable without Kafka or PostgreSQL. The runtime persists
the returned instance, history and outbox rows in one transaction.

Rules worth knowing before reading the code:

* A reply matches the awaited command iff its step and command id are the awaited ones and its
  attempt is not newer than the last send. Anything else changes nothing and is recorded as a
  duplicate (already answered), late (for the step the saga gave up on) or stale reply.
* Compensation (:mod:`coordinator.core.compensation`) undoes ``completed_steps`` in reverse.
  The step in flight when the saga gave up (deadline or retries exhausted, aborted, or an
  unusable success reply: its payload fails the step's model, or it is a participant's
  stand-in for a reply Kafka would never take) is *in doubt*: it is undone first, by its
  compensation or, without one, by a fence, both naming the command they undo so the
  participant refuses it if it has not run it yet. The saga is terminal only once that undo is answered: it never ends while a
  command it sent could still take effect. A late reply of that step changes nothing.
* A deadline of a command no participant has picked up yet is postponed while the command's
  service is alive (heartbeats): queueing is a capacity matter, not a failure. Once picked up,
  the timeout runs from the pickup.
* A RETRYABLE reply is handled like a missed deadline, at once: re-send while attempts remain.
  A RETRYABLE reply to an older attempt than the last send changes nothing.
* Backoff spaces out *deadlines*: a re-send is emitted at once and awaited until
  ``now + backoff + timeout``. (Delaying the send itself is left to a later change.)
* Command ids carry the saga's *epoch*, which only an operator's retry of a FAILED saga bumps:
  the participant recorded its final refusal under the old id and would answer a re-send of it
  from that record. Retrying an active saga re-sends the awaited id, so a participant that did
  act on it answers from its record instead of acting twice. Replies are recognised under the
  ids of every epoch so far.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from coordinator.core.business_keys import business_keys
from coordinator.core.compensation import (
    begin_compensation,
    compensate_next,
    fail_compensation,
    in_doubt_reply,
    mark_in_doubt,
)
from coordinator.core.definition import SagaDefinition, Stage, Step, unknown_fields
from coordinator.core.draft import TransitionDraft, awaited_timeout, describe, retry_policy
from coordinator.core.errors import (
    InvalidOperatorActionError,
    InvalidSagaDataError,
    SagaDefinitionError,
)
from coordinator.core.state import (
    ACTIVE_STATUSES,
    AdmitSaga,
    CommandPickedUp,
    CommandPurpose,
    DeadlineFired,
    HistoryKind,
    LifecycleKind,
    OperatorAbort,
    OperatorRetry,
    ReplyReceived,
    SagaInput,
    SagaInstance,
    SagaStatus,
    SignalReceived,
    StartSaga,
    Transition,
    command_id_for,
)
from service_sdk.contract import Outcome, undeliverable_reason

__all__ = ["STALE_REASONS", "apply", "start_saga"]

STALE_REASONS = (
    "missing_step",
    "missing_command_id",
    "unknown_step",
    "not_awaiting",
    "other_step",
    "other_command_id",
    "future_attempt",
)
"""Why a reply matched nothing the saga sent or awaits: the ``reason`` of a stale reply."""

Definition = type[SagaDefinition[Any]]

_RETRYABLE_REPLY_JITTER = 0.5
"""Replies carry no random number; the midpoint yields the policy's nominal backoff."""


def start_saga(
    definition: Definition,
    saga_id: str,
    event: StartSaga,
    now: datetime,
    *,
    admit: bool = True,
) -> Transition:
    """Create a saga instance from a start request and send its first command.

    With ``admit=False`` (the admission caps are full) the saga is created QUEUED and sends
    nothing until an :class:`AdmitSaga` input lets it go.

    Raises:
        InvalidSagaDataError: ``event.data`` does not validate against the data model.
        SagaDefinitionError: The first step's ``build`` fails or returns the wrong command.
    """
    ignored = unknown_fields(definition.data_model, event.data)
    known = {k: v for k, v in event.data.items() if k not in ignored}
    try:
        data = definition.data_model.model_validate(known)
    except ValidationError as exc:
        raise InvalidSagaDataError(
            f"invalid data for saga type {definition.name!r}: {describe(exc)}", saga_id=saga_id
        ) from exc
    instance = SagaInstance(
        saga_id=saga_id,
        saga_type=definition.name,
        definition_version=definition.version,
        status=SagaStatus.RUNNING if admit else SagaStatus.QUEUED,
        data=data.model_dump(mode="json"),
        created_at=now,
        updated_at=now,
        traceparent=event.traceparent,
        parent_saga_id=event.parent_saga_id,
        parent_step=event.parent_step,
        business_keys=business_keys(definition.search_keys, data.model_dump(mode="json")),
    )
    draft = TransitionDraft(definition, instance, now, event.message_id)
    # Tolerant reader: unknown top-level fields of the start data are ignored, and said so.
    noted = _ignored(f"{definition.name}.start", ignored)
    if admit:
        _begin(draft, **noted)
    else:
        draft.record(
            HistoryKind.QUEUED,
            None,
            data=dict(instance.data),
            definition_version=definition.version,
            **noted,
        )
    return draft.finish(None)


def _ignored(message_type: str, fields: Iterable[str], prefix: str = "") -> dict[str, Any]:
    """History detail naming the unknown fields a message carried (none: nothing)."""
    names = sorted(f"{prefix}{name}" for name in fields)
    return {"ignored_fields": names, "message_type": message_type} if names else {}


def _begin(d: TransitionDraft, **noted: Any) -> None:
    """Start going forward: the first step's command."""
    d.update(status=SagaStatus.RUNNING)
    d.record(
        HistoryKind.STARTED,
        None,
        data=dict(d.instance.data),
        definition_version=d.definition.version,
        **noted,
    )
    d.emit(LifecycleKind.STARTED)
    d.send(
        _plain(d.definition.steps[0]), compensation=False, attempt=1, purpose=CommandPurpose.FORWARD
    )


def apply(
    definition: Definition, instance: SagaInstance, event: SagaInput, now: datetime
) -> Transition:
    """Decide what ``event`` does to ``instance``; inputs are never mutated.

    Raises:
        InvalidOperatorActionError: An operator action does not apply to the saga's status.
        SagaDefinitionError: A step's ``build`` fails or returns the wrong command type.
        InvalidSagaDataError: The stored data no longer validates against the data model.
    """
    draft = TransitionDraft(definition, instance, now)
    if isinstance(event, ReplyReceived):
        draft.message_id = event.message_id
        _on_reply(draft, event)
    elif isinstance(event, DeadlineFired):
        _on_deadline(draft, event)
    elif isinstance(event, CommandPickedUp):
        _on_pickup(draft, event)
    elif isinstance(event, AdmitSaga):
        if instance.status is SagaStatus.QUEUED:
            _begin(draft)
    elif isinstance(event, OperatorAbort):
        _on_abort(draft, event)
    elif isinstance(event, OperatorRetry):
        _on_retry(draft, event)
    elif isinstance(event, SignalReceived):
        draft.message_id = event.message_id
        draft.record(
            HistoryKind.SIGNAL_REJECTED, None, name=event.name, reason="signal_not_awaited"
        )
        draft.rejection = "signal_not_awaited"
    else:
        # The saga exists already: a redelivered or repeated start request changes nothing.
        draft.message_id = event.message_id
        draft.record(HistoryKind.DUPLICATE_START, None)
    return draft.finish(instance)


# --- replies -------------------------------------------------------------------------------


def _on_reply(d: TransitionDraft, reply: ReplyReceived) -> None:
    inst = d.instance
    seen: dict[str, Any] = {
        "command_id": reply.command_id,
        "attempt": reply.attempt,
        "outcome": reply.outcome.value,
    }
    if reply.error is not None:
        seen["error"] = reply.error
    if (undeliverable := undeliverable_reason(reply.payload)) is not None:
        # A participant's stand-in for a reply Kafka would never take (see the marker).
        seen["undeliverable"] = undeliverable
    awaited = (
        reply.step is not None
        and reply.step == inst.current_step
        and reply.command_id == inst.command_id
        and reply.attempt <= inst.attempt
    )
    if awaited and reply.step is not None:
        step = d.definition.step(reply.step)
        if inst.status is SagaStatus.RUNNING:
            _forward_reply(d, step, reply, seen)
        elif inst.status is SagaStatus.COMPENSATING:
            _compensation_reply(d, step, reply, seen)
        elif reply.outcome is Outcome.SUCCESS:
            # FAILED gave up on this compensation, but it happened after all: carry on.
            d.record(HistoryKind.LATE_REPLY, step.name, **seen, action="resume")
            _compensation_reply(d, step, reply, seen)
        else:
            d.record(HistoryKind.LATE_REPLY, step.name, **seen)
        return
    _on_unexpected_reply(d, reply, seen)


def _stale_reason(d: TransitionDraft, reply: ReplyReceived) -> str:
    """Why a reply matches nothing the saga sent or awaits (the ``reason`` of a stale reply)."""
    inst = d.instance
    if reply.step is None:
        return "missing_step"
    if reply.command_id is None:
        return "missing_command_id"
    if reply.step not in {step.name for step in d.definition.steps}:
        return "unknown_step"
    if inst.current_step is None:
        return "not_awaiting"
    if reply.step != inst.current_step:
        return "other_step"
    if reply.command_id != inst.command_id:
        return "other_command_id"
    return "future_attempt"


def _on_unexpected_reply(d: TransitionDraft, reply: ReplyReceived, seen: dict[str, Any]) -> None:
    inst = d.instance
    name = reply.step
    if name is not None and reply.command_id is not None:
        forward = reply.command_id in _command_ids(inst, name, compensation=False)
        compensating = reply.command_id in _command_ids(inst, name, compensation=True)
        if (name in inst.completed_steps and forward) or (
            name in inst.compensated_steps and compensating
        ):
            d.record(HistoryKind.DUPLICATE_REPLY, name, **seen)
            return
        late = _abandoned_step(d)
        if late is not None and late.name == name and forward:
            # The saga gave up on this step and sent its undo (a compensation or a fence)
            # behind it, so whatever this reply says, that undo settles it.
            undone_by = "in_doubt" if inst.in_doubt_step == name else "settled"
            d.record(HistoryKind.LATE_REPLY, name, **seen, undone_by=undone_by)
            return
    d.record(HistoryKind.STALE_REPLY, name, **seen, reason=_stale_reason(d, reply))


def _forward_reply(
    d: TransitionDraft, step: Step[Any], reply: ReplyReceived, seen: dict[str, Any]
) -> None:
    if reply.outcome is Outcome.SUCCESS:
        if "undeliverable" in seen:
            # The effect happened, but its result can never be delivered, whatever the
            # payload model would accept: undo it with the rest.
            _fail_step(
                d, step, f"reply undeliverable: {seen['undeliverable']}", in_doubt=True, **seen
            )
            return
        data = d.fold(step, reply.payload)
        if isinstance(data, str):
            # The effect happened; only its reply is unusable: undo it with the rest.
            _fail_step(d, step, data, in_doubt=True, **seen)
            return
        d.update(data=data, completed_steps=(*d.instance.completed_steps, step.name))
        model = step.command.reply_model
        ignored = unknown_fields(model, reply.payload) if model is not None else ()
        d.record(
            HistoryKind.STEP_SUCCEEDED,
            step.name,
            **seen,
            payload=dict(reply.payload),
            **_ignored(step.command.message_type, ignored, "payload."),
        )
        d.emit(LifecycleKind.STEP_COMPLETED, step.name)
        _advance(d, step)
    elif reply.outcome is Outcome.RETRYABLE:
        _retryable_reply(d, step, reply, seen, compensation=False)
    else:
        _fail_step(d, step, reply.error or "failed", **seen)


def _compensation_reply(
    d: TransitionDraft, step: Step[Any], reply: ReplyReceived, seen: dict[str, Any]
) -> None:
    if reply.outcome is Outcome.SUCCESS and step.name == d.instance.in_doubt_step:
        in_doubt_reply(d, step, reply, seen)
    elif reply.outcome is Outcome.SUCCESS:
        d.update(compensated_steps=(*d.instance.compensated_steps, step.name))
        d.record(HistoryKind.COMPENSATION_SUCCEEDED, step.name, **seen)
        compensate_next(d)
    elif reply.outcome is Outcome.RETRYABLE:
        _retryable_reply(d, step, reply, seen, compensation=True)
    else:
        fail_compensation(d, step, reply.error or "failed", **seen)


def _retryable_reply(
    d: TransitionDraft,
    step: Step[Any],
    reply: ReplyReceived,
    seen: dict[str, Any],
    *,
    compensation: bool,
) -> None:
    attempt = d.instance.attempt
    superseded = reply.attempt < attempt
    d.record(
        HistoryKind.STEP_RETRYABLE_FAILURE,
        step.name,
        **seen,
        compensation=compensation,
        superseded=superseded,
    )
    if superseded:
        return  # a newer send is already in flight; its reply decides
    error = reply.error or "retryable failure"
    _retry_or_give_up(
        d,
        step,
        compensation=compensation,
        random_unit=_RETRYABLE_REPLY_JITTER,
        exhausted=f"{error} (still failing after {attempt} attempts)",
    )


# --- deadlines and operators ---------------------------------------------------------------


def _on_deadline(d: TransitionDraft, event: DeadlineFired) -> None:
    inst = d.instance
    detail = {"command_id": event.command_id, "attempt": event.attempt, "deadline": True}
    active = inst.status in (SagaStatus.RUNNING, SagaStatus.COMPENSATING)
    awaited = (inst.current_step, inst.command_id, inst.attempt)
    if not active or (event.step, event.command_id, event.attempt) != awaited:
        d.record(HistoryKind.STALE_DEADLINE, event.step, **detail)
        return
    compensation = inst.status is SagaStatus.COMPENSATING
    step = d.definition.step(event.step)
    if inst.picked_up_at is None and (event.participant_alive or event.command_unsent):
        # Not sent yet (Kafka unreachable), or queued behind other work at a participant that
        # is alive: a capacity or transport matter, not a failure of this command. Look again
        # one timeout later.
        deadline = d.now + awaited_timeout(step, compensation=compensation)
        d.update(deadline_at=deadline)
        d.record(
            HistoryKind.DEADLINE_POSTPONED,
            event.step,
            **detail,
            waiting_for="send" if event.command_unsent else "pickup",
            deadline_at=deadline.isoformat(),
        )
        return
    d.record(HistoryKind.DEADLINE_MISSED, event.step, **detail)
    _retry_or_give_up(
        d,
        step,
        compensation=compensation,
        random_unit=event.random_unit,
        exhausted=f"no reply after {inst.attempt} attempts",
    )


def _on_pickup(d: TransitionDraft, event: CommandPickedUp) -> None:
    inst = d.instance
    awaited = (
        inst.status in ACTIVE_STATUSES
        and inst.picked_up_at is None
        and event.step == inst.current_step
        and event.command_id == inst.command_id
        and event.attempt <= inst.attempt
    )
    if not awaited:
        return  # a report about a command the saga no longer awaits: nothing to record
    step = d.definition.step(event.step)
    timeout = awaited_timeout(step, compensation=inst.status is SagaStatus.COMPENSATING)
    deadline = event.at + timeout
    d.update(picked_up_at=event.at, deadline_at=deadline)
    d.record(
        HistoryKind.COMMAND_PICKED_UP,
        event.step,
        command_id=event.command_id,
        attempt=event.attempt,
        deadline_at=deadline.isoformat(),
    )


def _on_abort(d: TransitionDraft, event: OperatorAbort) -> None:
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
        if inst.status is SagaStatus.RUNNING and inst.current_step is not None:
            # The command in flight may still take effect: undo it first (or fence it).
            mark_in_doubt(d)
        begin_compensation(d, f"aborted by {event.actor}: {event.reason}")


def _on_retry(d: TransitionDraft, event: OperatorRetry) -> None:
    inst = d.instance
    if inst.current_step is None or inst.status in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED):
        raise InvalidOperatorActionError(
            f"cannot retry a {inst.status.value} saga", saga_id=inst.saga_id, step=inst.current_step
        )
    d.record(
        HistoryKind.OPERATOR_ACTION,
        inst.current_step,
        actor=event.actor,
        action="retry",
        reason=event.reason,
    )
    step = d.definition.step(inst.current_step)
    if inst.status is SagaStatus.FAILED:
        # A fresh retry budget: attempts count from the operator's action. A new epoch, so a
        # new command id: the participant answers the old one from its record of the refusal.
        d.update(status=SagaStatus.COMPENSATING, epoch=inst.epoch + 1)
        d.emit(LifecycleKind.COMPENSATING, reason=inst.failure_reason)
        d.send(step, compensation=True, attempt=1, purpose=CommandPurpose.RETRY)
    else:
        # No final answer is recorded for the awaited command (it would have moved the saga
        # on), so the same id is safe and keeps a participant that did act from acting twice.
        compensation = inst.status is SagaStatus.COMPENSATING
        attempt = inst.attempt + 1
        d.send(
            step,
            compensation=compensation,
            attempt=attempt,
            purpose=CommandPurpose.RETRY,
            command_id=inst.command_id,
        )


# --- moves ---------------------------------------------------------------------------------


def _advance(d: TransitionDraft, done: Step[Any]) -> None:
    steps = d.definition.steps
    index = d.definition.step_index(done.name) + 1
    if index < len(steps):
        d.send(_plain(steps[index]), compensation=False, attempt=1, purpose=CommandPurpose.FORWARD)
        return
    d.update(
        status=SagaStatus.COMPLETED,
        current_step=None,
        command_id=None,
        attempt=0,
        deadline_at=None,
    )
    d.record(HistoryKind.COMPLETED, None)
    d.emit(LifecycleKind.COMPLETED)


def _retry_or_give_up(
    d: TransitionDraft, step: Step[Any], *, compensation: bool, random_unit: float, exhausted: str
) -> None:
    attempt = d.instance.attempt
    policy = retry_policy(step, compensation=compensation)
    if attempt < policy.max_attempts:
        delay = policy.backoff(attempt, random_unit)
        d.send(
            step,
            compensation=compensation,
            attempt=attempt + 1,
            purpose=CommandPurpose.RETRY,
            delay=delay,
        )
    elif compensation:
        fail_compensation(d, step, exhausted)
    else:
        # No answer we can trust: a copy of the command may still run. Undo it first.
        _fail_step(d, step, exhausted, in_doubt=True)


def _fail_step(
    d: TransitionDraft, step: Step[Any], error: str, /, *, in_doubt: bool = False, **detail: Any
) -> None:
    d.record(HistoryKind.STEP_FAILED, step.name, **{**detail, "error": error, "in_doubt": in_doubt})
    if in_doubt:
        mark_in_doubt(d)
    begin_compensation(d, f"{step.name}: {error}")


# --- helpers -------------------------------------------------------------------------------


def _plain(stage: Stage[Any]) -> Step[Any]:
    if not isinstance(stage, Step):
        raise SagaDefinitionError(f"{stage.name}: {type(stage).__name__} is not run yet")
    return stage


def _command_ids(inst: SagaInstance, step: str, *, compensation: bool) -> frozenset[str]:
    """The ids a step's command (or its compensation) may have had, in any epoch so far."""
    return frozenset(
        command_id_for(inst.saga_id, step, compensation=compensation, epoch=epoch)
        for epoch in range(inst.epoch + 1)
    )


def _abandoned_step(d: TransitionDraft) -> Step[Any] | None:
    """The forward step that was in flight when the saga stopped going forward, if any."""
    if d.instance.status in (SagaStatus.RUNNING, SagaStatus.COMPLETED):
        return None
    index = len(d.instance.completed_steps)
    steps = d.definition.steps
    return _plain(steps[index]) if index < len(steps) else None
