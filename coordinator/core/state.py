"""The values the pure engine works on: a saga instance, what happens to it, and the result.

Nothing here does I/O. The runtime loads a :class:`SagaInstance` from PostgreSQL, hands it and
an incoming :data:`SagaInput` to the engine, and persists the :class:`Transition` it returns.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from service_sdk.contract import Outcome

__all__ = [
    "ACTIVE_STATUSES",
    "TERMINAL_STATUSES",
    "AdmitSaga",
    "AwaitKind",
    "Awaited",
    "ChildStart",
    "CommandPickedUp",
    "CommandPurpose",
    "DeadlineFired",
    "HistoryEntry",
    "HistoryKind",
    "LifecycleEvent",
    "LifecycleKind",
    "OperatorAbort",
    "OperatorRetry",
    "OutgoingCommand",
    "PendingSignal",
    "ReplyReceived",
    "SagaInput",
    "SagaInstance",
    "SagaStatus",
    "SignalReceived",
    "StartSaga",
    "Transition",
    "command_id_for",
    "head_of",
]

_COMMAND_NAMESPACE = uuid.UUID("6f1c2a4e-8a3b-4f7e-9a51-3c0d2e9b7a10")


class SagaStatus(StrEnum):
    """Where a saga is. The last three are terminal."""

    QUEUED = "QUEUED"
    """Started, but waiting for capacity (admission control): no command sent yet."""
    RUNNING = "RUNNING"
    COMPENSATING = "COMPENSATING"
    COMPLETED = "COMPLETED"
    COMPENSATED = "COMPENSATED"
    FAILED = "FAILED"
    """Compensation could not finish: an operator is needed."""


TERMINAL_STATUSES = frozenset({SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED})
ACTIVE_STATUSES = frozenset({SagaStatus.RUNNING, SagaStatus.COMPENSATING})
"""Sagas in flight: they count against the admission caps and may await a command."""


def command_id_for(saga_id: str, step: str, *, compensation: bool, epoch: int = 0) -> str:
    """The id of a step's command (or its compensation).

    Deterministic, so re-sends and a re-run of the engine after a crash produce the same id and
    a participant answers them from its record instead of acting twice. ``epoch`` (see
    :attr:`SagaInstance.epoch`) changes the id: a participant that refused a command for good
    answers a re-send of the same id from its record, so an operator's retry needs a new one.
    Epoch 0 keeps the ids sagas had before epochs existed.

    Raises:
        ValueError: ``epoch`` is negative.
    """
    if epoch < 0:
        raise ValueError(f"epoch must not be negative, got {epoch}")
    phase = "compensate" if compensation else "forward"
    suffix = f"/{epoch}" if epoch else ""
    return str(uuid.uuid5(_COMMAND_NAMESPACE, f"{saga_id}/{step}/{phase}{suffix}"))


class AwaitKind(StrEnum):
    """What an awaited entry waits for."""

    FORWARD = "forward"
    """A participant's reply to a step's command."""
    COMPENSATION = "compensation"
    """A participant's reply to a compensation or a fence."""
    TIMER = "timer"
    """A timer's fire time (the deadline); no participant is involved."""
    SIGNAL = "signal"
    """A signal for this saga; the deadline is the wait's timeout."""
    CHILD = "child"
    """The end of a child saga (forward), announced as an ordinary reply."""
    CHILD_COMPENSATION = "child_compensation"
    """The end of the saga that undoes a completed child."""


@dataclass(frozen=True)
class Awaited:
    """One thing a saga awaits: a command's reply, a timer, a signal or a child saga's end.

    A saga awaits several at once inside a parallel group, one otherwise.

    Attributes:
        step: The step (or wait, timer, child saga) it belongs to.
        command_id: The id of the command awaited (for a child saga: the child's saga id).
        attempt: How many times that command has been sent.
        deadline_at: When the reply is overdue (a timer's fire time, a wait's timeout); None
            once the saga FAILED (an operator decides).
        service: The participant the command went to; None when no participant is involved.
        picked_up_at: When the participant was seen working on it (see
            :attr:`SagaInstance.picked_up_at`).
        kind: What is awaited.
        compensates: For an undo of a step in doubt, the forward command id it settles.
    """

    step: str
    command_id: str
    attempt: int
    deadline_at: datetime | None
    service: str | None = None
    picked_up_at: datetime | None = None
    kind: AwaitKind = AwaitKind.FORWARD
    compensates: str | None = None

    @property
    def is_undo(self) -> bool:
        """True for a compensation (or a fence, or a child's undo saga)."""
        return self.kind in (AwaitKind.COMPENSATION, AwaitKind.CHILD_COMPENSATION)


def _due_first(entry: Awaited) -> tuple[bool, datetime | None]:
    # Entries without a deadline (a FAILED saga's) sort last; ties keep the given order.
    return (entry.deadline_at is None, entry.deadline_at)


def head_of(awaiting: tuple[Awaited, ...]) -> Awaited | None:
    """The awaited entry due first (None when nothing is awaited)."""
    return min(awaiting, key=_due_first) if awaiting else None


@dataclass(frozen=True)
class PendingSignal:
    """A signal that arrived before its wait began: kept until the wait consumes it."""

    message_id: str
    name: str
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SagaInstance:
    """One saga's persisted state.

    Attributes:
        current_step: The step whose reply the saga awaits: a forward step while RUNNING, the
            step being undone while COMPENSATING; None once terminal.
        command_id: The id of the command awaited (forward or compensation).
        attempt: How many times that command has been sent.
        deadline_at: When the awaited reply is overdue; None when nothing is awaited.
        service: The participant service the awaited command went to.
        picked_up_at: When the participant was seen working on the awaited command (its
            heartbeat listed it); None while the command may still wait in a queue. The step's
            timeout runs from here, so queueing is never counted as the participant's failure.
        in_doubt_step: A forward step the saga gave up on while its command could still take
            effect (deadline or retries exhausted, aborted, or an unusable success reply). It is
            undone first: its compensation, or a fence for a step without one, carries
            ``in_doubt_command_id`` so the participant either undoes the effect or refuses the
            command for good (a tombstone). Cleared once that answer arrives.
        in_doubt_command_id: The forward command id of ``in_doubt_step``.
        completed_steps: Forward steps that succeeded, in order.
        compensated_steps: Steps whose compensation succeeded, in order of undoing.
        failure_reason: Why the saga compensates or failed.
        epoch: How many times an operator retried the saga out of FAILED; part of the id of
            every command sent since (see :func:`command_id_for`).
        business_keys: The definition's ``search_keys`` with their values at start, as
            ``name=value`` (see :mod:`coordinator.core.business_keys`); never changed after.
        awaiting: Everything the saga awaits (several inside a parallel group). The scalar
            fields ``current_step``, ``command_id``, ``attempt``, ``deadline_at``, ``service``
            and ``picked_up_at`` describe the entry due first, and ``in_doubt_step`` /
            ``in_doubt_command_id`` the first undo of a step in doubt: kept for the deadline
            scanner's index and for readers that show one step. An instance built with the
            scalars only (rows written before parallel groups) awaits what they describe.
        stage: The index in the definition's ``steps`` of the stage the saga runs, or where
            going forward stopped.
        skipped_steps: Steps (and groups) whose ``run_if`` said no.
        pending_signals: Signals kept for a wait that lies ahead (the latest per name).
        parent_saga_id: The saga that started this one as a child, if any.
        parent_step: The parent's step this saga stands for.
        version: Incremented on every change; guards concurrent writers.
    """

    saga_id: str
    saga_type: str
    definition_version: int
    status: SagaStatus
    data: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    current_step: str | None = None
    command_id: str | None = None
    attempt: int = 0
    deadline_at: datetime | None = None
    completed_steps: tuple[str, ...] = ()
    compensated_steps: tuple[str, ...] = ()
    failure_reason: str | None = None
    traceparent: str | None = None
    epoch: int = 0
    service: str | None = None
    picked_up_at: datetime | None = None
    in_doubt_step: str | None = None
    in_doubt_command_id: str | None = None
    business_keys: tuple[str, ...] = ()
    awaiting: tuple[Awaited, ...] = ()
    stage: int = 0
    skipped_steps: tuple[str, ...] = ()
    pending_signals: tuple[PendingSignal, ...] = ()
    parent_saga_id: str | None = None
    parent_step: str | None = None
    version: int = 0

    def __post_init__(self) -> None:
        if self.awaiting or self.current_step is None or self.command_id is None:
            return
        # Written before ``awaiting`` existed: the scalars describe the one awaited command.
        undo = self.status not in (SagaStatus.RUNNING, SagaStatus.QUEUED)
        legacy = Awaited(
            step=self.current_step,
            command_id=self.command_id,
            attempt=self.attempt,
            deadline_at=self.deadline_at,
            service=self.service,
            picked_up_at=self.picked_up_at,
            kind=AwaitKind.COMPENSATION if undo else AwaitKind.FORWARD,
            compensates=(
                self.in_doubt_command_id
                if undo and self.in_doubt_step == self.current_step
                else None
            ),
        )
        object.__setattr__(self, "awaiting", (legacy,))

    def awaited(self, step: str, command_id: str) -> Awaited | None:
        """The awaited entry of ``step`` with ``command_id``, if the saga awaits it."""
        for entry in self.awaiting:
            if entry.step == step and entry.command_id == command_id:
                return entry
        return None

    @property
    def is_terminal(self) -> bool:
        """True once the saga is COMPLETED, COMPENSATED or FAILED."""
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True)
class StartSaga:
    """A request to start a saga with the given data."""

    message_id: str
    data: dict[str, Any]
    traceparent: str | None = None
    parent_saga_id: str | None = None
    """Set when a parent saga starts this one as a child (see :class:`ChildStart`)."""
    parent_step: str | None = None


@dataclass(frozen=True)
class SignalReceived:
    """A named signal for a saga (an approval, say), with its payload."""

    message_id: str
    name: str
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ReplyReceived:
    """A participant's reply to a command."""

    message_id: str
    step: str | None
    command_id: str | None
    attempt: int
    outcome: Outcome
    payload: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class DeadlineFired:
    """The awaited reply did not arrive by ``instance.deadline_at``.

    Attributes:
        random_unit: A number in [0, 1) for the retry jitter, so the engine stays pure.
    """

    step: str
    command_id: str
    attempt: int
    random_unit: float = 0.5
    participant_alive: bool = False
    """The command's service sent a heartbeat recently. A command it has not picked up yet is
    then waiting in a queue: its deadline is postponed instead of counted as a failure."""
    command_unsent: bool = False
    """The awaited command is still in the outbox (Kafka was unreachable): it cannot have been
    answered, so its deadline is postponed too."""


@dataclass(frozen=True)
class CommandPickedUp:
    """A participant reported that it is working on a command (its heartbeat listed it).

    Attributes:
        at: When the coordinator learned it (its own clock, so participants' clocks do not
            matter); the step's timeout runs from here.
    """

    step: str
    command_id: str
    attempt: int
    at: datetime


@dataclass(frozen=True)
class AdmitSaga:
    """Capacity freed up: a QUEUED saga may send its first command."""


@dataclass(frozen=True)
class OperatorAbort:
    """An operator asks a running saga to compensate."""

    actor: str
    reason: str


@dataclass(frozen=True)
class OperatorRetry:
    """An operator asks a FAILED saga (or a stuck step) to try again."""

    actor: str
    reason: str


SagaInput = (
    StartSaga
    | ReplyReceived
    | DeadlineFired
    | CommandPickedUp
    | AdmitSaga
    | OperatorAbort
    | OperatorRetry
    | SignalReceived
)


class CommandPurpose(StrEnum):
    """Why a command is sent."""

    FORWARD = "forward"
    RETRY = "retry"
    COMPENSATION = "compensation"
    FENCE = "fence"
    """Undo a step without a compensation: the participant refuses its command for good."""


@dataclass(frozen=True)
class OutgoingCommand:
    """A command the runtime must publish (through the outbox) to ``<service>.commands``."""

    service: str
    step: str
    message_type: str
    command_id: str
    attempt: int
    payload: dict[str, Any]
    purpose: CommandPurpose
    compensates: str | None = None
    """The forward command id this compensation (or fence) undoes when it may not have run:
    the participant then refuses that command for good if it has not run it yet."""


@dataclass(frozen=True)
class ChildStart:
    """A child saga the runtime must start, in the parent's transaction (a duplicate start of
    the same ``saga_id`` changes nothing, or re-sends the end of a child that has ended).

    ``saga_id`` is the command id the parent awaits; the child's end comes back as an ordinary
    reply to it: step ``parent_step``, attempt ``attempt``.
    """

    saga_type: str
    saga_id: str
    data: dict[str, Any]
    parent_saga_id: str
    parent_step: str
    attempt: int


class HistoryKind(StrEnum):
    """Kinds of history entries; every transition writes at least one."""

    QUEUED = "queued"
    """Started while the admission caps were full: waits for capacity."""
    STARTED = "started"
    COMMAND_SENT = "command_sent"
    COMMAND_PICKED_UP = "command_picked_up"
    COMMAND_UNSENDABLE = "command_unsendable"
    """Kafka refused the command for good (too large, bad topic): dead-lettered, not sent.
    The saga's deadline then counts as for a command nobody answers."""
    STEP_SUCCEEDED = "step_succeeded"
    STEP_FAILED = "step_failed"
    STEP_RETRYABLE_FAILURE = "step_retryable_failure"
    COMPENSATION_SENT = "compensation_sent"
    COMPENSATION_SUCCEEDED = "compensation_succeeded"
    COMPENSATION_FAILED = "compensation_failed"
    DEADLINE_MISSED = "deadline_missed"
    DEADLINE_POSTPONED = "deadline_postponed"
    """The command still waits in a live participant's queue: not counted as a failure."""
    DUPLICATE_REPLY = "duplicate_reply"
    DUPLICATE_START = "duplicate_start"
    """A start request for a saga id that exists already: nothing changes."""
    CONFLICTING_START = "conflicting_start"
    """A start request for a saga id that exists with other data: refused, nothing changes."""
    STALE_REPLY = "stale_reply"
    STALE_DEADLINE = "stale_deadline"
    """A deadline for a command the saga no longer awaits: nothing changes."""
    LATE_REPLY = "late_reply"
    OPERATOR_ACTION = "operator_action"
    STEP_SKIPPED = "step_skipped"
    """A step's (or group's) ``run_if`` said no: no command, nothing to compensate."""
    TIMER_SET = "timer_set"
    TIMER_FIRED = "timer_fired"
    SIGNAL_AWAITED = "signal_awaited"
    SIGNAL_RECEIVED = "signal_received"
    SIGNAL_KEPT = "signal_kept"
    """A signal for a wait that lies ahead: kept until the wait begins."""
    SIGNAL_REJECTED = "signal_rejected"
    """A signal nobody waits for (or an invalid one): dead-lettered by the runtime."""
    TIMED_OUT_DEFAULT = "timed_out_default"
    """A wait timed out and its ``on_timeout="continue"`` took the default branch."""
    CHILD_STARTED = "child_started"
    COMPLETED = "completed"
    COMPENSATED = "compensated"
    FAILED = "failed"


@dataclass(frozen=True)
class HistoryEntry:
    """One line of a saga's timeline, with the message that caused it."""

    kind: HistoryKind
    step: str | None = None
    message_id: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


class LifecycleKind(StrEnum):
    """Saga lifecycle events published to ``saga.events``."""

    STARTED = "saga.started"
    STEP_COMPLETED = "saga.step_completed"
    COMPENSATING = "saga.compensating"
    COMPLETED = "saga.completed"
    COMPENSATED = "saga.compensated"
    FAILED = "saga.failed"


_OUTCOMES = frozenset(
    {
        LifecycleKind.STARTED,
        LifecycleKind.COMPLETED,
        LifecycleKind.COMPENSATED,
        LifecycleKind.FAILED,
    }
)


class LifecyclePublishing(StrEnum):
    """Which lifecycle events are published: each is an outbox row and a Kafka message, five
    of the twelve messages of a three-step saga when all are."""

    ALL = "all"
    OUTCOMES = "outcomes"
    """``saga.started`` and the terminal events, not the ones in between."""
    NONE = "none"

    def includes(self, kind: LifecycleKind) -> bool:
        """True when events of ``kind`` are published."""
        if self is LifecyclePublishing.ALL:
            return True
        return self is LifecyclePublishing.OUTCOMES and kind in _OUTCOMES


@dataclass(frozen=True)
class LifecycleEvent:
    """A lifecycle event the runtime publishes (through the outbox) to ``saga.events``."""

    kind: LifecycleKind
    step: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Transition:
    """What the engine decided.

    Attributes:
        instance: The new state (the same object when nothing changed).
        commands: Commands to publish, in order.
        history: Entries to append to the saga's history (empty only for a pickup report that
            changed nothing).
        events: Lifecycle events to publish.
        changed: False when the input was recognised as a no-op (duplicate, stale, late);
            the history still records it.
        child_starts: Child sagas to start in the same transaction.
        rejection: Why a signal was refused (``signal_not_awaited``, ``signal_invalid``,
            ``saga_terminal``); the runtime dead-letters it with that reason.
    """

    instance: SagaInstance
    commands: tuple[OutgoingCommand, ...] = ()
    history: tuple[HistoryEntry, ...] = ()
    events: tuple[LifecycleEvent, ...] = ()
    changed: bool = True
    child_starts: tuple[ChildStart, ...] = ()
    rejection: str | None = None
