"""Sagas: start one, read one, list them, retry or abort one, send one a signal.

The mutating endpoints (start, retry, abort, signal) sit on a router guarded by the bearer token, the
reads on one guarded while reads need it (:mod:`coordinator.api.auth`); both are combined in
:data:`router`. What each parameter accepts is in :mod:`coordinator.api.validation`.

A start is checked before anything is written: its saga id's alphabet, its data's strings and
depth, and the size of the Kafka record it makes (``max_message_bytes``, 413 beyond). A start of
an existing saga id with different data answers 409 (:mod:`coordinator.api.idempotency`).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Path, Query, Response
from pydantic import AfterValidator

from coordinator.api.auth import (
    ReadTokenFirstRoute,
    TokenFirstRoute,
    require_read_token,
    require_token,
)
from coordinator.api.dependencies import BackendDep, MaxMessageBytesDep
from coordinator.api.errors import ApiError
from coordinator.api.idempotency import started_with, starts_alike
from coordinator.api.models import (
    DEFAULT_ACTOR,
    ActionRequest,
    ActionResponse,
    ChildView,
    ErrorResponse,
    HistoryView,
    SagaPage,
    SagaTimelineView,
    SagaView,
    SignalResponse,
    StartResponse,
)
from coordinator.api.validation import (
    MAX_ID_LENGTH,
    MAX_LIST_LIMIT,
    MAX_OFFSET,
    SAGA_ID_PATTERN,
    SagaData,
    check_text,
)
from coordinator.core.business_keys import parse_business_key
from coordinator.core.errors import UnknownSagaTypeError
from coordinator.core.state import SagaStatus
from coordinator.observability.tracing import ensure_traceparent
from coordinator.ops.client import start_request
from coordinator.ops.signals import record_bytes
from service_sdk.contract import SIGNAL_NAME_PATTERN
from service_sdk.signals import signal_envelope

__all__ = ["router"]

_COMMON: dict[int | str, dict[str, Any]] = {422: {"model": ErrorResponse}}
_GUARDED: dict[int | str, dict[str, Any]] = {
    **_COMMON,
    401: {"model": ErrorResponse, "description": "No or wrong bearer token."},
    403: {"model": ErrorResponse, "description": "No API token is configured."},
}
_NOT_FOUND: dict[str, Any] = {"model": ErrorResponse, "description": "No saga with this id."}
_ACTION: dict[int | str, dict[str, Any]] = {
    404: _NOT_FOUND,
    409: {"model": ErrorResponse, "description": "The action does not apply now."},
}

SagaIdPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=MAX_ID_LENGTH,
        description="Any printable characters (no control characters).",
    ),
    AfterValidator(check_text),
]
DryRun = Annotated[
    bool, Query(description="Rehearse the action in a rolled-back transaction; change nothing.")
]

_reads = APIRouter(
    tags=["sagas"],
    route_class=ReadTokenFirstRoute,
    dependencies=[Depends(require_read_token)],
    responses=_GUARDED,
)
_writes = APIRouter(
    tags=["sagas"],
    route_class=TokenFirstRoute,
    dependencies=[Depends(require_token)],
    responses=_GUARDED,
)


def _record_bytes(
    saga_type: str, data: Mapping[str, Any], saga_id: str | None, traceparent: str | None
) -> int:
    # The start request as it would travel on saga.requests (body, key, headers): the first
    # command and the saga's events carry the same data, so this is the record to fit.
    envelope = start_request(
        saga_type,
        data,
        saga_id=saga_id,
        source="http-api",
        traceparent=ensure_traceparent(traceparent),
    )
    headers = envelope.headers()
    return (
        len(envelope.to_bytes())
        + len(envelope.key())
        + sum(len(k.encode()) + len(v.encode()) for k, v in headers.items())
    )


_NEW_ID_DOC = f"`{SAGA_ID_PATTERN}`: letters, digits and `. _ : @ -`."


@_writes.post(
    "/sagas/{saga_type}",
    status_code=202,
    response_model=StartResponse,
    responses={
        404: {"model": ErrorResponse, "description": "Unknown saga type."},
        409: {
            "model": ErrorResponse,
            "description": "The saga id exists and was started with different data.",
        },
        413: {
            "model": ErrorResponse,
            "description": "The body, or the Kafka message it makes, is too large.",
        },
    },
    summary="Start a saga",
)
async def start_saga(
    backend: BackendDep,
    max_message_bytes: MaxMessageBytesDep,
    saga_type: Annotated[
        str, Path(min_length=1, max_length=MAX_ID_LENGTH), AfterValidator(check_text)
    ],
    data: Annotated[
        SagaData,
        Body(description="The saga's data, validated against its definition's data model."),
    ],
    response: Response,
    saga_id: Annotated[
        str | None,
        Query(
            pattern=SAGA_ID_PATTERN,
            description="The saga's id; starting the same id again starts it once. " + _NEW_ID_DOC,
        ),
    ] = None,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            pattern=SAGA_ID_PATTERN,
            description="Used as the saga id when `saga_id` is not given. " + _NEW_ID_DOC,
        ),
    ] = None,
    traceparent: Annotated[
        str | None,
        Header(description="W3C trace context; a new trace is started if absent or invalid."),
    ] = None,
) -> StartResponse:
    """Start a saga of `saga_type` with the body as its data. Idempotent per saga id:
    the first start wins; a repeat with the same body answers 202 with the same id, one
    with a different body 409."""
    if saga_id is not None and idempotency_key is not None and saga_id != idempotency_key:
        raise ApiError(
            422, "invalid_request", "saga_id and Idempotency-Key differ; give one, or equal"
        )
    if saga_type not in backend.saga_types():
        raise UnknownSagaTypeError(f"unknown saga type {saga_type!r}")
    wanted = saga_id or idempotency_key
    size = _record_bytes(saga_type, data, wanted, traceparent)
    if size > max_message_bytes:
        raise ApiError(
            413,
            "message_too_large",
            f"the saga's data makes a {size}-byte Kafka message; the limit is "
            f"{max_message_bytes} bytes (SAGA_KAFKA__MAX_MESSAGE_BYTES)",
        )
    started = await backend.start_saga(saga_type, data, saga_id=wanted, traceparent=traceparent)
    # The processor refuses a start whose saga id exists with other data (409 through its
    # ConflictingStartError); this comparison stays as a guard of the same rule.
    if wanted is not None and not starts_alike(started_with(await backend.show(started)), data):
        raise ApiError(
            409,
            "idempotency_conflict",
            f"saga {started!r} already exists with different data; a repeated start must "
            "send the same body (or use a new saga id)",
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


@_writes.post(
    "/sagas/{saga_id}/signals/{name}",
    status_code=202,
    response_model=SignalResponse,
    responses={
        404: _NOT_FOUND,
        413: {"model": ErrorResponse, "description": "The Kafka message is too large."},
    },
    summary="Send a saga a signal",
)
async def signal_saga(
    backend: BackendDep,
    max_message_bytes: MaxMessageBytesDep,
    saga_id: SagaIdPath,
    name: Annotated[
        str,
        Path(
            min_length=1,
            max_length=MAX_ID_LENGTH,
            pattern=SIGNAL_NAME_PATTERN,
            description="The signal's name, the one a WaitForSignal step waits for.",
        ),
    ],
    payload: Annotated[
        SagaData | None,
        Body(description="The signal's payload (a JSON object); none: `{}`."),
    ] = None,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            pattern=SAGA_ID_PATTERN,
            description="Used as the signal id: the same id again is applied once. " + _NEW_ID_DOC,
        ),
    ] = None,
    traceparent: Annotated[str | None, Header(description="W3C trace context.")] = None,
) -> SignalResponse:
    """Publish signal `name` for the saga to `saga.signals`; 202 once Kafka has it. A saga
    waiting for it takes it; an active saga whose wait for it lies ahead keeps it; otherwise
    the signal is dead-lettered with the reason (`signal_not_awaited`, `signal_invalid`,
    `saga_terminal`)."""
    body = dict(payload or {})
    size = record_bytes(signal_envelope(saga_id, name, body, message_id=idempotency_key))
    if size > max_message_bytes:
        raise ApiError(
            413,
            "message_too_large",
            f"the signal makes a {size}-byte Kafka message; the limit is {max_message_bytes} "
            "bytes (SAGA_KAFKA__MAX_MESSAGE_BYTES)",
        )
    sent = await backend.send_signal(
        saga_id,
        name,
        body,
        message_id=idempotency_key,
        traceparent=ensure_traceparent(traceparent) if traceparent else None,
    )
    return SignalResponse.model_validate(sent)


@_reads.get(
    "/sagas/{saga_id}",
    response_model=SagaTimelineView,
    responses={404: _NOT_FOUND},
    summary="A saga and its history",
)
async def get_saga(backend: BackendDep, saga_id: SagaIdPath) -> SagaTimelineView:
    """The saga's state, the child sagas it started (its parent is `saga.parent_saga_id`), and
    its timeline, oldest entry first."""
    timeline = await backend.show(saga_id)
    return SagaTimelineView(
        saga=SagaView.model_validate(timeline.instance),
        children=[ChildView.model_validate(c) for c in timeline.children],
        history=[HistoryView.model_validate(r) for r in timeline.history],
    )


@_reads.get("/sagas", response_model=SagaPage, summary="List sagas")
async def list_sagas(
    backend: BackendDep,
    status: Annotated[SagaStatus | None, Query(description="Only sagas in this status.")] = None,
    saga_type: Annotated[
        str | None,
        Query(min_length=1, max_length=MAX_ID_LENGTH, description="Only this type."),
        AfterValidator(check_text),
    ] = None,
    key: Annotated[
        str | None,
        Query(
            min_length=3,
            max_length=MAX_ID_LENGTH,
            description="Only sagas with this business key, `name=value` (e.g. "
            "`order_id=A-17`): a field its definition lists in `search_keys`.",
        ),
        AfterValidator(check_text),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = 50,
    offset: Annotated[
        int, Query(ge=0, le=MAX_OFFSET, description="Deeper pages: filter instead.")
    ] = 0,
) -> SagaPage:
    """Sagas newest first, optionally of one status and/or type, or with a business key."""
    try:
        business_key = parse_business_key(key) if key is not None else None
    except ValueError as exc:
        raise ApiError(422, "invalid_request", str(exc)) from exc
    found = await backend.list_sagas(
        status=status, saga_type=saga_type, limit=limit, offset=offset, business_key=business_key
    )
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
