"""The HTTP API's request and response bodies (pydantic models; they shape ``docs/openapi.json``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from coordinator.api.validation import CleanText
from coordinator.core.state import SagaStatus

__all__ = [
    "DEFAULT_ACTOR",
    "ActionRequest",
    "ActionResponse",
    "AwaitedView",
    "ChildView",
    "CommandView",
    "ErrorItem",
    "ErrorResponse",
    "HealthResponse",
    "HistoryView",
    "ReadyResponse",
    "SagaPage",
    "SagaTimelineView",
    "SagaView",
    "SignalResponse",
    "StartResponse",
]

DEFAULT_ACTOR = "http-api"
"""The actor recorded for an operator action whose request names none."""


class ErrorItem(BaseModel):
    """One validation problem, as pydantic reports it."""

    loc: list[str | int]
    msg: str
    type: str


class ErrorResponse(BaseModel):
    """The body of every 4xx/5xx answer."""

    error: str = Field(description="A stable code, e.g. `saga_not_found`, `invalid_request`.")
    message: str = Field(description="What went wrong, for people.")
    errors: list[ErrorItem] | None = Field(
        default=None, description="Validation problems, when the request did not validate."
    )
    saga_id: str | None = Field(
        default=None,
        description="The saga concerned, e.g. the stored saga a conflicting start names.",
    )


class StartResponse(BaseModel):
    """A saga was accepted (or already existed under this id: starting is idempotent)."""

    saga_id: str
    saga_type: str
    location: str = Field(description="Where to follow it: `GET /sagas/{saga_id}`.")


class SignalResponse(BaseModel):
    """A signal was published to `saga.signals`; the coordinators apply it from there."""

    model_config = ConfigDict(from_attributes=True)

    signal_id: str = Field(
        description="The signal's message id: its history entry (and any dead letter) names it."
    )
    saga_id: str
    name: str
    topic: str
    saga_status: SagaStatus = Field(
        description="The saga's status when sent: a terminal saga dead-letters the signal "
        "(`saga_terminal`)."
    )


class AwaitedView(BaseModel):
    """One thing a saga awaits: a command's reply, a timer, a signal or a child saga's end."""

    model_config = ConfigDict(from_attributes=True)

    step: str
    kind: str = Field(
        description="forward, compensation, timer, signal, child or child_compensation."
    )
    command_id: str = Field(description="The command id (for a child saga: its saga id).")
    attempt: int
    deadline_at: datetime | None = Field(
        description="When it is overdue (a timer's fire time, a wait's timeout)."
    )
    service: str | None = None
    picked_up_at: datetime | None = None
    compensates: str | None = Field(
        default=None, description="For the undo of a step in doubt: the command it settles."
    )


class SagaView(BaseModel):
    """A saga instance."""

    model_config = ConfigDict(from_attributes=True)

    saga_id: str
    saga_type: str
    definition_version: int
    status: SagaStatus
    current_step: str | None
    command_id: str | None
    attempt: int
    epoch: int
    deadline_at: datetime | None
    service: str | None = Field(default=None, description="Where the awaited command went.")
    picked_up_at: datetime | None = Field(
        default=None,
        description="When the participant picked the awaited command up (heartbeat); null "
        "while it may still wait in a queue.",
    )
    in_doubt_step: str | None = Field(
        default=None,
        description="A step the saga gave up on whose command may still run; its undo is "
        "answered before the saga can end.",
    )
    in_doubt_command_id: str | None = None
    awaiting: list[AwaitedView] = Field(
        default_factory=list,
        description="Everything the saga awaits (several inside a parallel group); the "
        "scalar fields above describe the one due first.",
    )
    completed_steps: list[str]
    skipped_steps: list[str] = Field(
        default_factory=list, description="Steps whose `run_if` said no."
    )
    compensated_steps: list[str]
    failure_reason: str | None
    data: dict[str, Any]
    business_keys: list[str] = Field(
        default_factory=list,
        description="The definition's search keys as `name=value`, stored at start "
        "(`GET /sagas?key=...` finds them).",
    )
    parent_saga_id: str | None = Field(
        default=None, description="The saga that started this one as a child step, if any."
    )
    parent_step: str | None = Field(
        default=None, description="The parent's step this saga stands for."
    )
    traceparent: str | None
    version: int
    created_at: datetime
    updated_at: datetime


class ChildView(BaseModel):
    """A saga this one started as a child step (`GET /sagas/{saga_id}` has the rest)."""

    model_config = ConfigDict(from_attributes=True)

    saga_id: str
    saga_type: str
    status: SagaStatus
    parent_step: str | None = Field(description="The step of the parent it stands for.")
    created_at: datetime
    updated_at: datetime


class HistoryView(BaseModel):
    """One line of a saga's history."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    kind: str
    step: str | None
    message_id: str | None
    detail: dict[str, Any]


class SagaTimelineView(BaseModel):
    """A saga, the child sagas it started, and its history, oldest first."""

    saga: SagaView
    children: list[ChildView] = Field(
        default_factory=list,
        description="The sagas this one started as child steps, oldest first; the parent, if "
        "any, is `saga.parent_saga_id`.",
    )
    history: list[HistoryView]


class SagaPage(BaseModel):
    """One page of sagas, newest first."""

    items: list[SagaView]
    limit: int
    offset: int
    next_offset: int | None = Field(description="The offset of the next page; null on the last.")


class ActionRequest(BaseModel):
    """Why an operator retries or aborts a saga; recorded in the saga's history."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    reason: CleanText = Field(min_length=1, max_length=1_000)
    actor: CleanText | None = Field(
        default=None, min_length=1, max_length=200, description=f"Default: `{DEFAULT_ACTOR}`."
    )


class CommandView(BaseModel):
    """A command an action sent (or, in a dry run, would send)."""

    model_config = ConfigDict(from_attributes=True)

    topic: str
    key: str
    message_type: str
    step: str
    command_id: str
    attempt: int


class ActionResponse(BaseModel):
    """What an operator action did, or with `dry_run` would have done."""

    model_config = ConfigDict(from_attributes=True)

    saga_id: str
    action: str
    actor: str
    reason: str
    dry_run: bool
    changed: bool
    status_before: SagaStatus
    status_after: SagaStatus
    epoch: int
    commands: list[CommandView]
    events: list[str]
    outbox_ids: list[int]


class HealthResponse(BaseModel):
    """The process is up."""

    status: str = "ok"


class ReadyResponse(BaseModel):
    """Whether this instance can serve."""

    ready: bool
    checks: dict[str, bool]
    partitions: int | None = None
    details: dict[str, str] = Field(default_factory=dict)
