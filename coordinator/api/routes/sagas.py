"""Sagas: start one, read one, list them, retry or abort one.

Reads need no token; the mutating endpoints (start, retry, abort) sit on a router guarded by
the bearer token (:mod:`coordinator.api.auth`). Both are combined in :data:`router`.
"""

from __future__ import annotations

import urllib.parse
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Path, Query, Response

from coordinator.api.auth import TokenFirstRoute, require_token
from coordinator.api.dependencies import BackendDep
from coordinator.api.errors import ApiError
from coordinator.api.models import (
    DEFAULT_ACTOR,
    ActionRequest,
    ActionResponse,
    ErrorResponse,
    HistoryView,
    SagaPage,
    SagaTimelineView,
    SagaView,
    StartResponse,
)
from coordinator.core.errors import UnknownSagaTypeError
from coordinator.core.state import SagaStatus

__all__ = ["router"]

_MAX_ID = 200  # the envelope's limit on saga ids and types
_MAX_LIST = 1_000

_COMMON: dict[int | str, dict[str, Any]] = {422: {"model": ErrorResponse}}
_MUTATING: dict[int | str, dict[str, Any]] = {
    **_COMMON,
    401: {"model": ErrorResponse, "description": "No or wrong bearer token."},
    403: {"model": ErrorResponse, "description": "No API token is configured."},
}
_NOT_FOUND: dict[str, Any] = {"model": ErrorResponse, "description": "No saga with this id."}
_ACTION: dict[int | str, dict[str, Any]] = {
    404: _NOT_FOUND,
    409: {"model": ErrorResponse, "description": "The action does not apply now."},
}

SagaIdPath = Annotated[str, Path(min_length=1, max_length=_MAX_ID)]
DryRun = Annotated[
    bool, Query(description="Rehearse the action in a rolled-back transaction; change nothing.")
]

_reads = APIRouter(tags=["sagas"], responses=_COMMON)
_writes = APIRouter(
    tags=["sagas"],
    route_class=TokenFirstRoute,
    dependencies=[Depends(require_token)],
    responses=_MUTATING,
)


@_writes.post(
    "/sagas/{saga_type}",
    status_code=202,
    response_model=StartResponse,
    responses={404: {"model": ErrorResponse, "description": "Unknown saga type."}},
    summary="Start a saga",
)
async def start_saga(
    backend: BackendDep,
    saga_type: Annotated[str, Path(min_length=1, max_length=_MAX_ID)],
    data: Annotated[
        dict[str, Any],
        Body(description="The saga's data, validated against its definition's data model."),
    ],
    response: Response,
    saga_id: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=_MAX_ID,
            description="The saga's id; starting the same id again starts it once.",
        ),
    ] = None,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=_MAX_ID,
            description="Used as the saga id when `saga_id` is not given.",
        ),
    ] = None,
    traceparent: Annotated[
        str | None,
        Header(description="W3C trace context; a new trace is started if absent or invalid."),
    ] = None,
) -> StartResponse:
    """Start a saga of `saga_type` with the body as its data. Idempotent per saga id:
    the first start wins and a repeat answers 202 with the same id."""
    if saga_id is not None and idempotency_key is not None and saga_id != idempotency_key:
        raise ApiError(
            422, "invalid_request", "saga_id and Idempotency-Key differ; give one, or equal"
        )
    if saga_type not in backend.saga_types():
        raise UnknownSagaTypeError(f"unknown saga type {saga_type!r}")
    started = await backend.start_saga(
        saga_type, data, saga_id=saga_id or idempotency_key, traceparent=traceparent
    )
    location = f"/sagas/{urllib.parse.quote(started, safe='')}"
    response.headers["Location"] = location
    return StartResponse(saga_id=started, saga_type=saga_type, location=location)


@_writes.post(
    "/sagas/{saga_id}/retry",
    response_model=ActionResponse,
    responses=_ACTION,
    summary="Retry a saga",
)
async def retry_saga(
    backend: BackendDep, saga_id: SagaIdPath, body: ActionRequest, dry_run: DryRun = False
) -> ActionResponse:
    """Re-send what a RUNNING or COMPENSATING saga awaits; resume a FAILED saga's
    compensation. Recorded in the saga's history with actor and reason."""
    result = await backend.retry(
        saga_id, actor=body.actor or DEFAULT_ACTOR, reason=body.reason, dry_run=dry_run
    )
    return ActionResponse.model_validate(result)


@_writes.post(
    "/sagas/{saga_id}/abort",
    response_model=ActionResponse,
    responses=_ACTION,
    summary="Abort a saga",
)
async def abort_saga(
    backend: BackendDep, saga_id: SagaIdPath, body: ActionRequest, dry_run: DryRun = False
) -> ActionResponse:
    """Stop a RUNNING saga and compensate its completed steps. Recorded in the saga's
    history with actor and reason."""
    result = await backend.abort(
        saga_id, actor=body.actor or DEFAULT_ACTOR, reason=body.reason, dry_run=dry_run
    )
    return ActionResponse.model_validate(result)


@_reads.get(
    "/sagas/{saga_id}",
    response_model=SagaTimelineView,
    responses={404: _NOT_FOUND},
    summary="A saga and its history",
)
async def get_saga(backend: BackendDep, saga_id: SagaIdPath) -> SagaTimelineView:
    """The saga's state and its timeline, oldest entry first."""
    timeline = await backend.show(saga_id)
    return SagaTimelineView(
        saga=SagaView.model_validate(timeline.instance),
        history=[HistoryView.model_validate(r) for r in timeline.history],
    )


@_reads.get("/sagas", response_model=SagaPage, summary="List sagas")
async def list_sagas(
    backend: BackendDep,
    status: Annotated[SagaStatus | None, Query(description="Only sagas in this status.")] = None,
    saga_type: Annotated[
        str | None, Query(min_length=1, max_length=_MAX_ID, description="Only this type.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=_MAX_LIST)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> SagaPage:
    """Sagas newest first, optionally of one status and/or type."""
    found = await backend.list_sagas(status=status, saga_type=saga_type, limit=limit, offset=offset)
    return SagaPage(
        items=[SagaView.model_validate(s) for s in found],
        limit=limit,
        offset=offset,
        next_offset=offset + len(found) if len(found) == limit else None,
    )


router = APIRouter()
"""Every saga endpoint: the token-guarded mutations first, then the reads."""
router.include_router(_writes)
router.include_router(_reads)
