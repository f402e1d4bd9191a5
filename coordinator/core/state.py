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
    "TERMINAL_STATUSES",
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

    RUNNING = "RUNNING"
    COMPENSATING = "COMPENSATING"
    COMPLETED = "COMPLETED"
    COMPENSATED = "COMPENSATED"
    FAILED = "FAILED"
    """Compensation could not finish: an operator is needed."""


TERMINAL_STATUSES = frozenset({SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED})


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
        completed_steps: Forward steps that succeeded, in order.
        compensated_steps: Steps whose compensation succeeded, in order of undoing.
        failure_reason: Why the saga compensates or failed.
        epoch: How many times an operator retried the saga out of FAILED; part of the id of
            every command sent since (see :func:`command_id_for`).
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


SagaInput = StartSaga | ReplyReceived | DeadlineFired | OperatorAbort | OperatorRetry


class CommandPurpose(StrEnum):
    """Why a command is sent."""

    FORWARD = "forward"
    RETRY = "retry"
    COMPENSATION = "compensation"


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


class HistoryKind(StrEnum):
    """Kinds of history entries; every transition writes at least one."""

    STARTED = "started"
    COMMAND_SENT = "command_sent"
    STEP_SUCCEEDED = "step_succeeded"
    STEP_FAILED = "step_failed"
    STEP_RETRYABLE_FAILURE = "step_retryable_failure"
    COMPENSATION_SENT = "compensation_sent"
    COMPENSATION_SUCCEEDED = "compensation_succeeded"
    COMPENSATION_FAILED = "compensation_failed"
    DEADLINE_MISSED = "deadline_missed"
    DUPLICATE_REPLY = "duplicate_reply"
    DUPLICATE_START = "duplicate_start"
    """A start request for a saga id that exists already: nothing changes."""
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
        history: Entries to append to the saga's history (never empty).
        events: Lifecycle events to publish.
        changed: False when the input was recognised as a no-op (duplicate, stale, late);
            the history still records it.
    """

    instance: SagaInstance
    commands: tuple[OutgoingCommand, ...] = ()
    history: tuple[HistoryEntry, ...] = ()
    events: tuple[LifecycleEvent, ...] = ()
    changed: bool = True
