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
    "ReplyReceived",
    "SagaInput",
    "SagaInstance",
    "SagaStatus",
    "StartSaga",
    "Transition",
    "command_id_for",
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
    version: int = 0

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
    """

    instance: SagaInstance
    commands: tuple[OutgoingCommand, ...] = ()
    history: tuple[HistoryEntry, ...] = ()
    events: tuple[LifecycleEvent, ...] = ()
    changed: bool = True
