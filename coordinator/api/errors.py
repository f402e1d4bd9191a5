"""Every error the HTTP API answers is a JSON :class:`~coordinator.api.models.ErrorResponse`.

``{"error": <code>, "message": <text>, "errors": [...]}``: request validation problems are 422
with pydantic's messages in ``errors``; the coordinator's :class:`SagaError` subclasses map to
404/409/422; a transient database failure is 503 with ``Retry-After``; anything else is 500.
:data:`EXCEPTION_HANDLERS` is what ``create_api`` installs.

An unexpected exception is answered by :func:`unexpected_error_response`, called from the
API's outermost middleware (:class:`coordinator.api.middleware.ErrorBoundaryMiddleware`) so
that it is logged exactly once: a handler registered for ``Exception`` would run in
Starlette's ``ServerErrorMiddleware``, which re-raises after answering, and uvicorn would log
the same traceback a second time. That one log line names the request's route (not its query,
headers or body), an error id the answer repeats, the exception types and the frames; it leaves
out the exceptions' messages, because database drivers quote the statement's arguments (saga
data) in theirs.
"""

from __future__ import annotations

import logging
import traceback
import urllib.parse
import uuid
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import PurePath
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from coordinator.api.models import ErrorItem, ErrorResponse
from coordinator.core.errors import (
    ConflictingStartError,
    InvalidOperatorActionError,
    InvalidSagaDataError,
    SagaConflictError,
    SagaError,
    SagaNotFoundError,
    UnknownSagaTypeError,
    UnknownSagaVersionError,
)
from coordinator.runtime.transient import is_transient

__all__ = ["EXCEPTION_HANDLERS", "ApiError", "error_response", "unexpected_error_response"]

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """An answer decided by the API itself (not by the backend): status, code and message.

    Args:
        status: The HTTP status.
        error: The stable code (``ErrorResponse.error``).
        message: What went wrong, for people.
        headers: Extra response headers (e.g. ``WWW-Authenticate``).
    """

    def __init__(
        self, status: int, error: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.headers = dict(headers or {})


def error_response(
    status: int,
    error: str,
    message: str,
    *,
    errors: list[ErrorItem] | None = None,
    headers: Mapping[str, str] | None = None,
    saga_id: str | None = None,
) -> JSONResponse:
    """The JSON ``ErrorResponse`` answer."""
    body = ErrorResponse(error=error, message=message, errors=errors, saga_id=saga_id)
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
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
}


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc.status, exc.error, exc.message, headers=exc.headers)


async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    items = _items(exc.errors())
    return error_response(422, "invalid_request", _summary(items), errors=items)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = _STATUS_CODES.get(exc.status_code, "error")
    return error_response(exc.status_code, code, str(exc.detail), headers=exc.headers)


async def _saga_error(request: Request, exc: SagaError) -> JSONResponse:
    if isinstance(exc, SagaNotFoundError):
        return error_response(404, "saga_not_found", str(exc))
    if isinstance(exc, UnknownSagaVersionError):
        # The saga exists; this coordinator lacks the definition version it runs on.
        return error_response(409, "version_not_loaded", str(exc), saga_id=exc.saga_id)
    if isinstance(exc, UnknownSagaTypeError):
        return error_response(404, "unknown_saga_type", str(exc))
    if isinstance(exc, InvalidSagaDataError):
        cause = exc.__cause__
        items = _items(cause.errors(), ("body",)) if isinstance(cause, ValidationError) else []
        return error_response(422, "invalid_saga_data", str(exc), errors=items or None)
    if isinstance(exc, ConflictingStartError) and exc.saga_id is not None:
        # The stored saga stands: say which one, and where to read it.
        location = f"/sagas/{urllib.parse.quote(exc.saga_id, safe='')}"
        return error_response(
            409,
            "idempotency_conflict",
            str(exc),
            saga_id=exc.saga_id,
            headers={"Location": location},
        )
    if isinstance(exc, InvalidOperatorActionError):
        return error_response(409, "invalid_action", str(exc))
    if isinstance(exc, SagaConflictError):
        return error_response(409, "conflict", f"{exc}; try again", headers={"Retry-After": "1"})
    logger.error("request failed: %s", exc, extra={"saga_id": exc.saga_id, "step": exc.step})
    return error_response(500, "saga_error", str(exc))


_MAX_FRAMES = 30


def _chain(exc: BaseException) -> list[BaseException]:
    found: list[BaseException] = []
    node: BaseException | None = exc
    while node is not None and node not in found:
        found.append(node)
        node = node.__cause__ or node.__context__
    return found


def _type_name(exc: BaseException) -> str:
    return f"{type(exc).__module__}.{type(exc).__qualname__}"


def _where(exc: BaseException) -> str:
    # The frames from the app down to where the outermost exception was raised; no messages.
    frames = traceback.extract_tb(exc.__traceback__)[-_MAX_FRAMES:]
    return " > ".join(f"{_short(f.filename)}:{f.lineno} {f.name}" for f in frames) or "-"


def _short(filename: str) -> str:
    # "coordinator/store/saga_store.py" -> "store/saga_store.py": enough to find the file.
    return "/".join(PurePath(filename).parts[-2:])


def unexpected_error_response(exc: Exception, route: str) -> JSONResponse:
    """Answer an exception no handler took: 503 when transient, else 500; log it once.

    Args:
        exc: The exception.
        route: What was asked, for the log (``"GET /sagas/{saga_id}"``: the route's template,
            so neither ids nor query values are logged).
    """
    chain = _chain(exc)
    types = " <- ".join(_type_name(e) for e in chain)
    if is_transient(exc):
        logger.warning("%s failed for a transient reason: %s", route, types)
        return error_response(
            503,
            "unavailable",
            "the database is unavailable; try again",
            headers={"Retry-After": "1"},
        )
    error_id = uuid.uuid4().hex[:16]
    logger.error("%s failed (error id %s): %s at %s", route, error_id, types, _where(exc))
    return error_response(
        500, "internal_error", f"internal error {error_id}; see the coordinator's log"
    )


EXCEPTION_HANDLERS: Mapping[
    int | type[Exception], Callable[[Request, Any], Coroutine[Any, Any, Response]]
] = {
    ApiError: _api_error,
    RequestValidationError: _invalid_request,
    StarletteHTTPException: _http_error,
    SagaError: _saga_error,
}
"""The app's exception handlers, by exception class (FastAPI's ``exception_handlers``)."""
