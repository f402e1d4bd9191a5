"""The coordinator's HTTP API: start sagas, inspect them, retry or abort them; health checks.

``create_api(backend, settings)`` builds the FastAPI app over a
:class:`~coordinator.api.backend.SagaBackend`, the small protocol the API needs (a running
coordinator is adapted by ``coordinator.app.CoordinatorBackend``; unit tests pass an in-memory
fake). The OpenAPI schema is served at ``/openapi.json`` and committed as ``docs/openapi.json``
(regenerate with ``python -m coordinator.api.app > docs/openapi.json``; a unit test keeps the
two equal).

Authentication: mutating endpoints (``POST``) need ``Authorization: Bearer <token>`` equal to
``SAGA_HTTP__TOKEN`` (compared in constant time); without it or with a wrong one they answer 401.
With no token configured they answer 403: mutations are refused, never open. Reads, ``/health``
and ``/ready`` need no token. The token is checked before the request body is read.

Every error is a JSON :class:`ErrorResponse` ``{"error": <code>, "message": <text>, "errors":
[...]}``; request validation problems are 422 with pydantic's messages in ``errors``.
"""

from __future__ import annotations

import hmac
import logging
import urllib.parse
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Body, FastAPI, Header, Path, Query, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from coordinator.api.backend import SagaBackend
from coordinator.api.models import (
    DEFAULT_ACTOR,
    ActionRequest,
    ActionResponse,
    ErrorItem,
    ErrorResponse,
    HealthResponse,
    HistoryView,
    ReadyResponse,
    SagaPage,
    SagaTimelineView,
    SagaView,
    StartResponse,
)
from coordinator.config import HttpSettings
from coordinator.core.errors import (
    InvalidOperatorActionError,
    InvalidSagaDataError,
    SagaConflictError,
    SagaError,
    SagaNotFoundError,
    UnknownSagaTypeError,
)
from coordinator.core.state import SagaStatus
from coordinator.runtime.consumer import is_transient

__all__ = ["API_VERSION", "create_api", "openapi_document"]

logger = logging.getLogger(__name__)

API_VERSION = "1.0.0"
"""The HTTP contract's version (not the package's): bump it when the schema changes."""

_MAX_ID = 200  # the envelope's limit on saga ids and types
_MAX_LIST = 1_000


# -- errors ----------------------------------------------------------------------------------


class _ApiError(Exception):
    def __init__(
        self, status: int, error: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.headers = dict(headers or {})


def _error(
    status: int,
    error: str,
    message: str,
    *,
    errors: list[ErrorItem] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = ErrorResponse(error=error, message=message, errors=errors)
    return JSONResponse(
        body.model_dump(mode="json", exclude_none=True), status_code=status, headers=headers
    )


def _items(raw: Sequence[Any], prefix: tuple[str, ...] = ()) -> list[ErrorItem]:
    # Only loc, msg and type: pydantic's "input" may echo a secret or a large body back.
    return [
        ErrorItem(loc=[*prefix, *e.get("loc", ())], msg=str(e.get("msg")), type=str(e.get("type")))
        for e in raw
    ]


def _summary(items: Sequence[ErrorItem]) -> str:
    first = items[0] if items else None
    if first is None:
        return "the request is not valid"
    where = ".".join(str(part) for part in first.loc) or "request"
    more = f" (and {len(items) - 1} more)" if len(items) > 1 else ""
    return f"{where}: {first.msg}{more}"


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    415: "unsupported_media_type",
    422: "invalid_request",
}


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(_ApiError)
    async def api_error(request: Request, exc: _ApiError) -> JSONResponse:
        return _error(exc.status, exc.error, exc.message, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        items = _items(exc.errors())
        return _error(422, "invalid_request", _summary(items), errors=items)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "error")
        return _error(exc.status_code, code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(SagaError)
    async def saga_error(request: Request, exc: SagaError) -> JSONResponse:
        if isinstance(exc, SagaNotFoundError):
            return _error(404, "saga_not_found", str(exc))
        if isinstance(exc, UnknownSagaTypeError):
            return _error(404, "unknown_saga_type", str(exc))
        if isinstance(exc, InvalidSagaDataError):
            cause = exc.__cause__
            items = _items(cause.errors(), ("body",)) if isinstance(cause, ValidationError) else []
            return _error(422, "invalid_saga_data", str(exc), errors=items or None)
        if isinstance(exc, InvalidOperatorActionError):
            return _error(409, "invalid_action", str(exc))
        if isinstance(exc, SagaConflictError):
            return _error(409, "conflict", f"{exc}; try again", headers={"Retry-After": "1"})
        logger.error("request failed: %s", exc, extra={"saga_id": exc.saga_id, "step": exc.step})
        return _error(500, "saga_error", str(exc))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        if is_transient(exc):
            logger.warning("request failed for a transient reason: %r", exc)
            return _error(
                503,
                "unavailable",
                "the database is unavailable; try again",
                headers={"Retry-After": "1"},
            )
        logger.error("request failed", exc_info=exc)
        return _error(500, "internal_error", "internal error; see the coordinator's log")


# -- authentication --------------------------------------------------------------------------

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearerToken",
    description="`SAGA_HTTP__TOKEN`. Without a configured token, mutating endpoints answer 403.",
)


def _authorize(request: Request) -> None:
    token = request.app.state.api_token
    if not token:
        raise _ApiError(
            403,
            "mutations_disabled",
            "mutating endpoints are disabled: no API token is configured (SAGA_HTTP__TOKEN)",
        )
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise _ApiError(
            401,
            "unauthorized",
            "this endpoint needs 'Authorization: Bearer <token>'",
            {"WWW-Authenticate": 'Bearer realm="saga-coordinator"'},
        )
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise _ApiError(
            401,
            "invalid_token",
            "the bearer token is not valid",
            {"WWW-Authenticate": 'Bearer realm="saga-coordinator", error="invalid_token"'},
        )


class _AuthorizedRoute(APIRoute):
    """Checks the bearer token before FastAPI reads or validates the request."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def authorized(request: Request) -> Response:
            _authorize(request)
            return await handler(request)

        return authorized


# -- the app ---------------------------------------------------------------------------------

_COMMON: dict[int | str, dict[str, Any]] = {422: {"model": ErrorResponse}}
_MUTATING: dict[int | str, dict[str, Any]] = {
    **_COMMON,
    401: {"model": ErrorResponse, "description": "No or wrong bearer token."},
    403: {"model": ErrorResponse, "description": "No API token is configured."},
}
_NOT_FOUND = {"model": ErrorResponse, "description": "No saga with this id."}

SagaIdPath = Annotated[str, Path(min_length=1, max_length=_MAX_ID)]
DryRun = Annotated[
    bool, Query(description="Rehearse the action in a rolled-back transaction; change nothing.")
]


def create_api(backend: SagaBackend, settings: HttpSettings) -> FastAPI:
    """The HTTP API over ``backend``; ``settings.token`` guards the mutating endpoints."""
    app = FastAPI(
        title="Saga coordinator",
        version=API_VERSION,
        # Operation ids are the handlers' names (start_saga, get_saga, ...), stable for clients.
        generate_unique_id_function=lambda route: route.name,
        description=(
            "Start sagas, follow them, and retry or abort them. Mutating endpoints need "
            "`Authorization: Bearer <token>` (`SAGA_HTTP__TOKEN`); with no token configured "
            "they are refused (403). Errors are JSON `ErrorResponse` objects."
        ),
    )
    token = settings.token.get_secret_value() if settings.token is not None else ""
    app.state.api_token = token
    _install_error_handlers(app)

    reads = APIRouter(tags=["sagas"], responses=_COMMON)
    writes = APIRouter(
        tags=["sagas"],
        route_class=_AuthorizedRoute,
        dependencies=[Security(_bearer)],
        responses=_MUTATING,
    )
    probes = APIRouter(tags=["health"])

    @writes.post(
        "/sagas/{saga_type}",
        status_code=202,
        response_model=StartResponse,
        responses={404: {"model": ErrorResponse, "description": "Unknown saga type."}},
        summary="Start a saga",
    )
    async def start_saga(
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
            raise _ApiError(
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

    @reads.get(
        "/sagas/{saga_id}",
        response_model=SagaTimelineView,
        responses={404: _NOT_FOUND},
        summary="A saga and its history",
    )
    async def get_saga(saga_id: SagaIdPath) -> SagaTimelineView:
        """The saga's state and its timeline, oldest entry first."""
        timeline = await backend.show(saga_id)
        return SagaTimelineView(
            saga=SagaView.model_validate(timeline.instance),
            history=[HistoryView.model_validate(r) for r in timeline.history],
        )

    @reads.get("/sagas", response_model=SagaPage, summary="List sagas")
    async def list_sagas(
        status: Annotated[
            SagaStatus | None, Query(description="Only sagas in this status.")
        ] = None,
        saga_type: Annotated[
            str | None, Query(min_length=1, max_length=_MAX_ID, description="Only this type.")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=_MAX_LIST)] = 50,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> SagaPage:
        """Sagas newest first, optionally of one status and/or type."""
        found = await backend.list_sagas(
            status=status, saga_type=saga_type, limit=limit, offset=offset
        )
        return SagaPage(
            items=[SagaView.model_validate(s) for s in found],
            limit=limit,
            offset=offset,
            next_offset=offset + len(found) if len(found) == limit else None,
        )

    action_responses: dict[int | str, dict[str, Any]] = {
        404: _NOT_FOUND,
        409: {"model": ErrorResponse, "description": "The action does not apply now."},
    }

    @writes.post(
        "/sagas/{saga_id}/retry",
        response_model=ActionResponse,
        responses=action_responses,
        summary="Retry a saga",
    )
    async def retry_saga(
        saga_id: SagaIdPath, body: ActionRequest, dry_run: DryRun = False
    ) -> ActionResponse:
        """Re-send what a RUNNING or COMPENSATING saga awaits; resume a FAILED saga's
        compensation. Recorded in the saga's history with actor and reason."""
        result = await backend.retry(
            saga_id, actor=body.actor or DEFAULT_ACTOR, reason=body.reason, dry_run=dry_run
        )
        return ActionResponse.model_validate(result)

    @writes.post(
        "/sagas/{saga_id}/abort",
        response_model=ActionResponse,
        responses=action_responses,
        summary="Abort a saga",
    )
    async def abort_saga(
        saga_id: SagaIdPath, body: ActionRequest, dry_run: DryRun = False
    ) -> ActionResponse:
        """Stop a RUNNING saga and compensate its completed steps. Recorded in the saga's
        history with actor and reason."""
        result = await backend.abort(
            saga_id, actor=body.actor or DEFAULT_ACTOR, reason=body.reason, dry_run=dry_run
        )
        return ActionResponse.model_validate(result)

    @probes.get("/health", response_model=HealthResponse, summary="Liveness")
    async def health() -> HealthResponse:
        """The process is up and serving HTTP."""
        return HealthResponse()

    @probes.get(
        "/ready",
        response_model=ReadyResponse,
        responses={503: {"model": ReadyResponse, "description": "Not ready."}},
        summary="Readiness",
    )
    async def ready(response: Response) -> ReadyResponse:
        """Ready when the database answers and the reply consumer runs; 503 otherwise."""
        report = await backend.readiness()
        if not report.ready:
            response.status_code = 503
        return ReadyResponse(
            ready=report.ready,
            checks=dict(report.checks),
            partitions=report.partitions,
            details=dict(report.details),
        )

    app.include_router(writes)
    app.include_router(reads)
    app.include_router(probes)
    return app


def openapi_document() -> dict[str, Any]:
    """The API's OpenAPI schema (it does not depend on the backend or the settings)."""

    class _Nothing:
        pass

    return create_api(_Nothing(), HttpSettings()).openapi()  # type: ignore[arg-type]


if __name__ == "__main__":
    import json
    import sys

    json.dump(openapi_document(), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
