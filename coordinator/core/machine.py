"""The saga state machine: ``(definition, instance, input, now) -> Transition``, nothing else.

Nothing here does I/O, reads the clock or draws random numbers: time and the retry jitter come
in as arguments, so every branch is testable without Kafka or PostgreSQL. The runtime persists
the returned instance, history and outbox rows in one transaction.

Rules worth knowing before reading the code:

* A saga awaits one or more things (``SagaInstance.awaiting``: several inside a parallel
  group): replies, a timer, a signal, a child saga's end. A reply matches an awaited command
  iff its step and command id are an awaited pair and its attempt is not newer than the last
  send of it. Anything else changes nothing and is recorded as a duplicate (already
  answered), late (for a step the saga gave up on) or stale reply.
* Going forward (:mod:`coordinator.core.stages`) enters one stage at a time: a step, a
  parallel group, a timer, a signal wait or a child saga; a stage whose ``run_if`` says no is
  skipped.
* Compensation (:mod:`coordinator.core.compensation`) undoes ``completed_steps`` in reverse.
  A command in flight when the saga gave up (deadline or retries exhausted, aborted, or an
  unusable success reply: its payload fails the step's model, or it is a participant's
  stand-in for a reply Kafka would never take) is *in doubt*: it is undone first, by its
  compensation or, without one, by a fence, both naming the command they undo so the
  participant refuses it if it has not run it yet. Every member of a parallel group still
  in flight when the saga gives up is in doubt too. The saga is terminal only once those
  undos are answered: it never ends while a command it sent could still take effect. A late
  reply of such a step changes nothing. A child saga still running is awaited instead (a
  saga cannot be fenced, but it always ends).
* Timers and signal waits (:mod:`coordinator.core.signals`) await no participant: their
  deadline is the fire time or the timeout, never postponed.
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
from dataclasses import replace
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from coordinator.core.business_keys import business_keys
from coordinator.core.compensation import (
    begin_compensation,
    compensate_next,
    fail_compensation,
    in_doubt_reply,
    start_child_undo,
)
from coordinator.core.definition import (
    ChildSaga,
    SagaDefinition,
    Step,
    WaitForSignal,
    unknown_fields,
)
from coordinator.core.draft import TransitionDraft, awaited_timeout, describe, retry_policy
from coordinator.core.errors import InvalidSagaDataError
from coordinator.core.operators import on_abort, on_retry
from coordinator.core.signals import on_signal
from coordinator.core.stages import advance, start_child, succeed
from coordinator.core.state import (
    ACTIVE_STATUSES,
    AdmitSaga,
    Awaited,
    AwaitKind,
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

__all__ = ["STALE_REASONS", "apply", "apply_all", "start_saga"]

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

_COMMANDS = (AwaitKind.FORWARD, AwaitKind.COMPENSATION)
"""Entries that await a participant's reply (timers, waits and child sagas await none)."""


def start_saga(
    definition: Definition,
    saga_id: str,
    event: StartSaga,
    now: datetime,
    *,
    admit: bool = True,
) -> Transition:
    """Create a saga instance from a start request and enter its first stage.

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
    """Start going forward: enter the first stage."""
    d.update(status=SagaStatus.RUNNING, stage=-1)
    d.record(
        HistoryKind.STARTED,
        None,
        data=dict(d.instance.data),
        definition_version=d.definition.version,
        **noted,
    )
    d.emit(LifecycleKind.STARTED)
    advance(d)


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
        on_abort(draft, event)
    elif isinstance(event, OperatorRetry):
        on_retry(draft, event)
    elif isinstance(event, SignalReceived):
        draft.message_id = event.message_id
        on_signal(draft, event)
    else:
        # The saga exists already: a redelivered or repeated start request changes nothing.
        draft.message_id = event.message_id
        draft.record(HistoryKind.DUPLICATE_START, None)
    return draft.finish(instance)


def apply_all(
    definition: Definition, instance: SagaInstance, events: Iterable[SagaInput], now: datetime
) -> Transition:
    """Apply ``events`` in turn, as one transition (the deadline scanner fires every overdue
    command of a saga at once this way)."""
    commands: list[Any] = []
    history: list[Any] = []
    lifecycle: list[Any] = []
    children: list[Any] = []
    current = instance
    for event in events:
        step = apply(definition, current, event, now)
        commands.extend(step.commands)
        history.extend(step.history)
        lifecycle.extend(step.events)
        children.extend(step.child_starts)
        current = step.instance
    return Transition(
        current,
        tuple(commands),
        tuple(history),
        tuple(lifecycle),
        current is not instance,
        tuple(children),
    )


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
    entry = (
        inst.awaited(reply.step, reply.command_id)
        if reply.step is not None and reply.command_id is not None
        else None
    )
    if (
        entry is None
        or reply.attempt > entry.attempt
        or entry.kind in (AwaitKind.TIMER, AwaitKind.SIGNAL)
    ):
        _on_unexpected_reply(d, reply, seen)
        return
    live = entry.deadline_at is not None
    if entry.kind in (AwaitKind.FORWARD, AwaitKind.CHILD):
        if inst.status is SagaStatus.RUNNING:
            _forward_reply(d, entry, reply, seen)
        elif entry.kind is AwaitKind.CHILD and live:
            _child_reply_backward(d, entry, reply, seen)
        else:
            # Given up: its undo (a compensation or a fence) settles it, whatever this says.
            d.record(HistoryKind.LATE_REPLY, entry.step, **seen, undone_by="in_doubt")
        return
    if live and inst.status is SagaStatus.COMPENSATING:
        _compensation_reply(d, entry, reply, seen)
    elif reply.outcome is Outcome.SUCCESS:
        # The saga gave up on this undo, but it happened after all: carry on.
        d.record(HistoryKind.LATE_REPLY, entry.step, **seen, action="resume")
        _compensation_reply(d, entry, reply, seen)
    else:
        d.record(HistoryKind.LATE_REPLY, entry.step, **seen)


def _stale_reason(d: TransitionDraft, reply: ReplyReceived) -> str:
    """Why a reply matches nothing the saga sent or awaits (the ``reason`` of a stale reply)."""
    inst = d.instance
    if reply.step is None:
        return "missing_step"
    if reply.command_id is None:
        return "missing_command_id"
    if reply.step not in {unit.name for unit in d.definition.units()}:
        return "unknown_step"
    if not inst.awaiting:
        return "not_awaiting"
    mine = [entry for entry in inst.awaiting if entry.step == reply.step]
    if not mine:
        return "other_step"
    if all(entry.command_id != reply.command_id for entry in mine):
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
        if forward and _abandoned(d, name):
            # The saga gave up on this step and sent its undo (a compensation or a fence)
            # behind it, or its command failed for good, so that settles it.
            in_doubt = any(e.step == name for e in inst.awaiting)
            d.record(
                HistoryKind.LATE_REPLY,
                name,
                **seen,
                undone_by="in_doubt" if in_doubt else "settled",
            )
            return
    d.record(HistoryKind.STALE_REPLY, name, **seen, reason=_stale_reason(d, reply))


def _forward_reply(
    d: TransitionDraft, entry: Awaited, reply: ReplyReceived, seen: dict[str, Any]
) -> None:
    unit = d.definition.unit(entry.step)
    if isinstance(unit, ChildSaga):
        _child_reply(d, unit, reply, seen)
        return
    assert isinstance(unit, Step)
    step = unit
    if reply.outcome is Outcome.SUCCESS:
        if "undeliverable" in seen:
            # The effect happened, but its result can never be delivered, whatever the
            # payload model would accept: undo it with the rest.
            _fail_step(
                d, step.name, f"reply undeliverable: {seen['undeliverable']}", in_doubt=True, **seen
            )
            return
        data = d.fold(step, reply.payload)
        if isinstance(data, str):
            # The effect happened; only its reply is unusable: undo it with the rest.
            _fail_step(d, step.name, data, in_doubt=True, **seen)
            return
        d.drop(step.name)
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
        advance(d)
    elif reply.outcome is Outcome.RETRYABLE:
        _retryable_reply(d, step, entry, reply, seen)
    else:
        _fail_step(d, step.name, reply.error or "failed", **seen)


def _child_reply(
    d: TransitionDraft, child: ChildSaga[Any], reply: ReplyReceived, seen: dict[str, Any]
) -> None:
    """The child saga ended: COMPLETED is the step's success, anything else its failure."""
    if reply.outcome is not Outcome.SUCCESS:
        _fail_step(d, child.name, reply.error or "child saga did not complete", **seen)
        return
    d.drop(child.name)
    # Completed whatever its data says: if the data is unusable, it is undone with the rest.
    d.update(completed_steps=(*d.instance.completed_steps, child.name))
    data: dict[str, Any] | str = d.instance.data
    if child.on_success is not None:
        try:
            folded = child.on_success(d.data(), dict(reply.payload))
            data = d.definition.data_model.model_validate(folded).model_dump(mode="json")
        except Exception as exc:
            data = f"invalid child data: {describe(exc)}"
    if isinstance(data, str):
        d.record(HistoryKind.STEP_FAILED, child.name, **{**seen, "error": data, "in_doubt": False})
        begin_compensation(d, f"{child.name}: {data}")
        return
    d.update(data=data)
    d.record(HistoryKind.STEP_SUCCEEDED, child.name, **seen, payload=dict(reply.payload))
    d.emit(LifecycleKind.STEP_COMPLETED, child.name)
    advance(d)


def _child_reply_backward(
    d: TransitionDraft, entry: Awaited, reply: ReplyReceived, seen: dict[str, Any]
) -> None:
    """A child saga that still ran when the parent gave up has ended: undo it if it
    completed."""
    d.drop(entry.step)
    if reply.outcome is Outcome.SUCCESS:
        d.update(completed_steps=(*d.instance.completed_steps, entry.step))
        d.record(HistoryKind.STEP_SUCCEEDED, entry.step, **seen, payload=dict(reply.payload))
    else:
        failed = {**seen, "error": reply.error or "failed", "in_doubt": False}
        d.record(HistoryKind.STEP_FAILED, entry.step, **failed)
    compensate_next(d)


def _compensation_reply(
    d: TransitionDraft, entry: Awaited, reply: ReplyReceived, seen: dict[str, Any]
) -> None:
    unit = d.definition.unit(entry.step)
    success = reply.outcome is Outcome.SUCCESS
    if success and entry.compensates is not None and isinstance(unit, Step):
        in_doubt_reply(d, unit, entry, reply, seen)
    elif success:
        d.drop(entry.step)
        d.update(compensated_steps=(*d.instance.compensated_steps, entry.step))
        d.record(HistoryKind.COMPENSATION_SUCCEEDED, entry.step, **seen)
        compensate_next(d)
    elif reply.outcome is Outcome.RETRYABLE and isinstance(unit, Step):
        _retryable_reply(d, unit, entry, reply, seen)
    else:
        fail_compensation(d, entry.step, reply.error or "failed", **seen)


def _retryable_reply(
    d: TransitionDraft, step: Step[Any], entry: Awaited, reply: ReplyReceived, seen: dict[str, Any]
) -> None:
    compensation = entry.is_undo
    superseded = reply.attempt < entry.attempt
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
        entry,
        random_unit=_RETRYABLE_REPLY_JITTER,
        exhausted=f"{error} (still failing after {entry.attempt} attempts)",
    )


# --- deadlines and pickups -----------------------------------------------------------------


def _on_deadline(d: TransitionDraft, event: DeadlineFired) -> None:
    inst = d.instance
    detail = {"command_id": event.command_id, "attempt": event.attempt, "deadline": True}
    entry = inst.awaited(event.step, event.command_id)
    if (
        inst.status not in ACTIVE_STATUSES
        or entry is None
        or entry.attempt != event.attempt
        or entry.deadline_at is None
    ):
        d.record(HistoryKind.STALE_DEADLINE, event.step, **detail)
        return
    unit = d.definition.unit(entry.step)
    if entry.kind is AwaitKind.TIMER:
        succeed(d, entry.step, HistoryKind.TIMER_FIRED, **detail)
        return
    if isinstance(unit, WaitForSignal):
        if unit.on_timeout == "continue":
            succeed(d, entry.step, HistoryKind.TIMED_OUT_DEFAULT, **detail, signal=unit.signal)
            return
        d.record(HistoryKind.DEADLINE_MISSED, entry.step, **detail)
        _fail_step(d, entry.step, f"no signal {unit.signal!r} within {unit.timeout}")
        return
    if isinstance(unit, ChildSaga):
        # A child saga always ends: ask again (a duplicate start changes nothing, or re-sends
        # the end of a child that has ended) rather than give it up.
        d.record(HistoryKind.DEADLINE_MISSED, entry.step, **detail)
        if entry.kind is AwaitKind.CHILD:
            start_child(d, unit, attempt=entry.attempt + 1, purpose=CommandPurpose.RETRY.value)
        else:
            start_child_undo(
                d,
                unit,
                attempt=entry.attempt + 1,
                purpose=CommandPurpose.RETRY,
                command_id=entry.command_id,
            )
        return
    assert isinstance(unit, Step)
    if entry.picked_up_at is None and (event.participant_alive or event.command_unsent):
        # Not sent yet (Kafka unreachable), or queued behind other work at a participant that
        # is alive: a capacity or transport matter, not a failure of this command. Look again
        # one timeout later.
        deadline = d.now + awaited_timeout(unit, compensation=entry.is_undo)
        d.put(replace(entry, deadline_at=deadline))
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
        unit,
        entry,
        random_unit=event.random_unit,
        exhausted=f"no reply after {entry.attempt} attempts",
    )


def _on_pickup(d: TransitionDraft, event: CommandPickedUp) -> None:
    inst = d.instance
    entry = inst.awaited(event.step, event.command_id)
    awaited = (
        inst.status in ACTIVE_STATUSES
        and entry is not None
        and entry.kind in _COMMANDS
        and entry.deadline_at is not None
        and entry.picked_up_at is None
        and event.attempt <= entry.attempt
    )
    if not awaited or entry is None:
        return  # a report about a command the saga no longer awaits: nothing to record
    step = d.definition.step(event.step)
    deadline = event.at + awaited_timeout(step, compensation=entry.is_undo)
    d.put(replace(entry, picked_up_at=event.at, deadline_at=deadline))
    d.record(
        HistoryKind.COMMAND_PICKED_UP,
        event.step,
        command_id=event.command_id,
        attempt=event.attempt,
        deadline_at=deadline.isoformat(),
    )


# --- moves ---------------------------------------------------------------------------------


def _retry_or_give_up(
    d: TransitionDraft, step: Step[Any], entry: Awaited, *, random_unit: float, exhausted: str
) -> None:
    compensation = entry.is_undo
    attempt = entry.attempt
    policy = retry_policy(step, compensation=compensation)
    if attempt < policy.max_attempts:
        delay = policy.backoff(attempt, random_unit)
        d.send(
            step,
            compensation=compensation,
            attempt=attempt + 1,
            purpose=CommandPurpose.RETRY,
            delay=delay,
            command_id=entry.command_id,
            compensates=entry.compensates,
        )
    elif compensation:
        fail_compensation(d, step.name, exhausted)
    else:
        # No answer we can trust: a copy of the command may still run. Undo it first.
        _fail_step(d, step.name, exhausted, in_doubt=True)


def _fail_step(
    d: TransitionDraft, name: str, error: str, /, *, in_doubt: bool = False, **detail: Any
) -> None:
    """``name`` failed: stop going forward. Unless its command is in doubt, nothing of it is
    left to undo; its siblings still in flight are given up (undone first)."""
    d.record(HistoryKind.STEP_FAILED, name, **{**detail, "error": error, "in_doubt": in_doubt})
    if not in_doubt:
        d.drop(name)
    begin_compensation(d, f"{name}: {error}")


# --- helpers -------------------------------------------------------------------------------


def _command_ids(inst: SagaInstance, step: str, *, compensation: bool) -> frozenset[str]:
    """The ids a step's command (or its compensation) may have had, in any epoch so far."""
    return frozenset(
        command_id_for(inst.saga_id, step, compensation=compensation, epoch=epoch)
        for epoch in range(inst.epoch + 1)
    )


def _abandoned(d: TransitionDraft, name: str) -> bool:
    """Whether ``name`` belongs to the stage that was running when the saga stopped going
    forward (its command failed for good, or was given up)."""
    if d.instance.status in (SagaStatus.RUNNING, SagaStatus.COMPLETED, SagaStatus.QUEUED):
        return False
    if name in d.instance.completed_steps:
        return False
    try:
        return d.definition.stage_index(name) == d.instance.stage
    except KeyError:
        return False
