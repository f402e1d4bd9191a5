"""Schedules: list them (with their next tick), read one, pause or resume one (token needed).

Served when the app is created with a :class:`~coordinator.api.schedule_backend.ScheduleBackend`
(a running coordinator always passes one); otherwise these answer 503.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from coordinator.api.auth import (
    ReadTokenFirstRoute,
    TokenFirstRoute,
    require_read_token,
    require_token,
)
from coordinator.api.errors import ApiError
from coordinator.api.models import DEFAULT_ACTOR, ErrorResponse
from coordinator.api.schedule_backend import ScheduleBackend
from coordinator.api.validation import CleanText, check_text
from coordinator.core.schedule import ScheduleNotFoundError
from coordinator.ops.schedules import ScheduleView

__all__ = ["ScheduleList", "ScheduleResponse", "router"]

_GUARDED: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorResponse},
    401: {"model": ErrorResponse, "description": "No or wrong bearer token."},
    403: {"model": ErrorResponse, "description": "No API token is configured."},
    503: {"model": ErrorResponse, "description": "This app serves no schedules."},
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "No schedule with this name."}
}

NamePath = Annotated[
    str,
    Path(min_length=1, max_length=100, description="The schedule's name."),
    AfterValidator(check_text),
]


class ScheduleResponse(BaseModel):
    """A schedule (times UTC; `next_tick_at` is null while paused)."""

    model_config = ConfigDict(from_attributes=True)

    name: str
    saga_type: str
    cron: str = Field(description="UTC; five fields, or six with seconds first.")
    description: str
    catch_up: str = Field(description="What becomes of missed ticks: skip, latest or all.")
    source: str = Field(description="Declared on a definition or in the configuration.")
    paused: bool
    next_tick_at: datetime | None
    last_tick_at: datetime | None
    last_saga_id: str | None
    last_fired_at: datetime | None
    paused_at: datetime | None = Field(description="When it was last paused or resumed.")
    paused_by: str | None
    pause_reason: str | None
    declared_at: datetime


class TickResponse(BaseModel):
    """A fired tick: the saga it started, or why it could not."""

    model_config = ConfigDict(from_attributes=True)

    tick_at: datetime
    saga_id: str
    outcome: str = Field(description="started or failed")
    error: str | None


class ScheduleList(BaseModel):
    """Every schedule any coordinator declared, by name."""

    items: list[ScheduleResponse]


class ScheduleDetail(BaseModel):
    """A schedule and its newest fired ticks, newest first."""

    schedule: ScheduleResponse
    ticks: list[TickResponse]


class PauseRequest(BaseModel):
    """Why the schedule is paused or resumed."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    reason: CleanText | None = Field(
        default=None, min_length=1, max_length=500, description="Required to pause."
    )
    actor: CleanText | None = Field(
        default=None, min_length=1, max_length=200, description=f"Default: `{DEFAULT_ACTOR}`."
    )


def get_schedules(request: Request) -> ScheduleBackend:
    """The schedule backend the app was created with (503 without one)."""
    backend: ScheduleBackend | None = getattr(request.app.state, "schedules", None)
    if backend is None:
        raise ApiError(503, "unavailable", "this API serves no schedules")
    return backend


SchedulesDep = Annotated[ScheduleBackend, Depends(get_schedules)]

_reads = APIRouter(
    tags=["schedules"],
    route_class=ReadTokenFirstRoute,
    dependencies=[Depends(require_read_token)],
    responses=_GUARDED,
)
_writes = APIRouter(
    tags=["schedules"],
    route_class=TokenFirstRoute,
    dependencies=[Depends(require_token)],
    responses=_GUARDED,
)


def _response(view: ScheduleView) -> ScheduleResponse:
    return ScheduleResponse.model_validate(view)


@_reads.get("/schedules", response_model=ScheduleList, summary="List schedules")
async def list_schedules(schedules: SchedulesDep) -> ScheduleList:
    """Every schedule, with its next tick, its last fired tick and whether it is paused."""
    return ScheduleList(items=[_response(v) for v in await schedules.list_schedules()])


@_reads.get(
    "/schedules/{name}",
    response_model=ScheduleDetail,
    responses=_NOT_FOUND,
    summary="A schedule and its ticks",
)
async def get_schedule(schedules: SchedulesDep, name: NamePath) -> ScheduleDetail:
    """The schedule and its newest fired ticks (the sagas they started)."""
    try:
        view, ticks = await schedules.show(name)
    except ScheduleNotFoundError as exc:
        raise ApiError(404, "schedule_not_found", str(exc)) from exc
    return ScheduleDetail(
        schedule=_response(view), ticks=[TickResponse.model_validate(t) for t in ticks]
    )


@_writes.post(
    "/schedules/{name}/pause",
    response_model=ScheduleResponse,
    responses=_NOT_FOUND,
    summary="Pause a schedule",
)
async def pause_schedule(
    schedules: SchedulesDep, name: NamePath, body: PauseRequest
) -> ScheduleResponse:
    """No coordinator fires the schedule until it is resumed; ticks in between stay unfired."""
    if body.reason is None:
        raise ApiError(422, "invalid_request", "a pause needs a reason")
    try:
        view = await schedules.pause(name, actor=body.actor or DEFAULT_ACTOR, reason=body.reason)
    except ScheduleNotFoundError as exc:
        raise ApiError(404, "schedule_not_found", str(exc)) from exc
    return _response(view)


@_writes.post(
    "/schedules/{name}/resume",
    response_model=ScheduleResponse,
    responses=_NOT_FOUND,
    summary="Resume a schedule",
)
async def resume_schedule(
    schedules: SchedulesDep, name: NamePath, body: PauseRequest
) -> ScheduleResponse:
    """Fire the schedule again from its next tick on."""
    try:
        view = await schedules.resume(name, actor=body.actor or DEFAULT_ACTOR, reason=body.reason)
    except ScheduleNotFoundError as exc:
        raise ApiError(404, "schedule_not_found", str(exc)) from exc
    return _response(view)


router = APIRouter()
"""Every schedule endpoint: the token-guarded mutations first, then the reads."""
router.include_router(_writes)
router.include_router(_reads)
