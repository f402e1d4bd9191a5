"""Every error the HTTP API answers is a JSON :class:`~coordinator.api.models.ErrorResponse`.

``{"error": <code>, "message": <text>, "errors": [...]}``: request validation problems are 422
with pydantic's messages in ``errors``; the coordinator's :class:`SagaError` subclasses map to
404/409/422; a transient database failure is 503 with ``Retry-After``; anything else is 500
(logged, never echoed). :data:`EXCEPTION_HANDLERS` is what ``create_api`` installs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from coordinator.api.models import ErrorItem, ErrorResponse
from coordinator.core.errors import (
    InvalidOperatorActionError,
    InvalidSagaDataError,
    SagaConflictError,
    SagaError,
    SagaNotFoundError,
    UnknownSagaTypeError,
)
from coordinator.runtime.transient import is_transient

__all__ = ["EXCEPTION_HANDLERS", "ApiError"]

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


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return _error(exc.status, exc.error, exc.message, headers=exc.headers)


async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    items = _items(exc.errors())
    return _error(422, "invalid_request", _summary(items), errors=items)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = _STATUS_CODES.get(exc.status_code, "error")
    return _error(exc.status_code, code, str(exc.detail), headers=exc.headers)


async def _saga_error(request: Request, exc: SagaError) -> JSONResponse:
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


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
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


EXCEPTION_HANDLERS: Mapping[
    int | type[Exception], Callable[[Request, Any], Coroutine[Any, Any, Response]]
] = {
    ApiError: _api_error,
    RequestValidationError: _invalid_request,
    StarletteHTTPException: _http_error,
    SagaError: _saga_error,
    Exception: _unexpected,
}
"""The app's exception handlers, by exception class (FastAPI's ``exception_handlers``)."""
