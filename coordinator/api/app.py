"""The coordinator's HTTP API: start sagas, inspect them, retry or abort them; health checks.

``create_api(backend, settings)`` assembles the FastAPI app from the module-level routers in
:mod:`coordinator.api.routes` over a :class:`~coordinator.api.backend.SagaBackend` (a running
coordinator is adapted by ``coordinator.app.CoordinatorBackend``; unit tests pass an in-memory
fake). Authentication is in :mod:`coordinator.api.auth`, the JSON error answers in
:mod:`coordinator.api.errors`, the body cap, the response headers and the last-resort error
answer in :mod:`coordinator.api.middleware`, what the API accepts in
:mod:`coordinator.api.validation`.

The OpenAPI schema is served at ``/openapi.json`` and committed as ``docs/openapi.json``
(regenerate with ``python -m coordinator.api.app > docs/openapi.json``; a unit test keeps the
two equal).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.middleware import Middleware

from coordinator.api.backend import SagaBackend
from coordinator.api.dependencies import bind
from coordinator.api.errors import EXCEPTION_HANDLERS
from coordinator.api.middleware import (
    BodyLimitMiddleware,
    ErrorBoundaryMiddleware,
    ResponseHeadersMiddleware,
)
from coordinator.api.routes import health, sagas
from coordinator.api.routes import schedules as schedules_routes
from coordinator.api.schedule_backend import ScheduleBackend
from coordinator.api.ui import ConsoleBackend, mount_console
from coordinator.api.validation import MAX_LIST_LIMIT, MAX_OFFSET, SAGA_ID_PATTERN
from coordinator.config import HttpSettings, KafkaSettings

__all__ = ["API_VERSION", "create_api", "openapi_document"]

API_VERSION = "1.0.0"
"""The HTTP contract's version (not the package's): bump it when the schema changes."""


def _operation_id(route: APIRoute) -> str:
    # The handlers' names (start_saga, get_saga, ...): stable for generated clients.
    return route.name


_DESCRIPTION = f"""\
Start sagas, follow them, and retry or abort them. Errors are JSON `ErrorResponse` objects.

**Authentication.** Mutating endpoints need `Authorization: Bearer <token>`
(`SAGA_HTTP__TOKEN`); with no token configured they are refused (403). Reads need the token
too while `SAGA_HTTP__TOKEN_FOR_READS` is on, which it is by default whenever a token is
configured. `/health`, `/ready`, `/openapi.json` and `/docs` are open.

**Saga ids.** A saga id given to start a saga (`?saga_id=` or `Idempotency-Key`) matches
`{SAGA_ID_PATTERN}`: letters, digits and `. _ : @ -`, at most 200. Ids in paths and
filters may hold any printable character, never control characters (which are refused
everywhere: 422), so sagas started over Kafka stay addressable.

**Idempotency.** Starting an existing saga id again answers 202 if the body is the same
(fields the body leaves out may have been filled in by the definition's defaults) and 409 if
it differs.

**Limits.** Request bodies: `SAGA_HTTP__MAX_BODY_BYTES` (1 MiB by default; 413 beyond). A
start whose Kafka message would exceed `SAGA_KAFKA__MAX_MESSAGE_BYTES` (1,000,000) is refused
with 413 before anything is stored. Saga data nests at most 32 deep and holds finite numbers
only. `limit` is at most {MAX_LIST_LIMIT}, `offset` at most {MAX_OFFSET:,}.
"""


def create_api(
    backend: SagaBackend,
    settings: HttpSettings,
    *,
    max_message_bytes: int | None = None,
    console: ConsoleBackend | None = None,
    schedules: ScheduleBackend | None = None,
) -> FastAPI:
    """The HTTP API over ``backend``.

    Args:
        backend: The coordinator (or a fake).
        settings: The token, whether reads need it, and the request limits.
        max_message_bytes: The Kafka record limit a start must fit
            (``KafkaSettings.max_message_bytes``; its default when None).
        console: What the web console under ``/ui`` reads and does; without it (or with
            ``settings.console.enabled`` off) there is no console.
        schedules: The schedules to list, pause and resume (``/schedules``, and the
            console's schedules page); without it those answer 503.
    """
    app = FastAPI(
        title="Saga coordinator",
        version=API_VERSION,
        generate_unique_id_function=_operation_id,
        exception_handlers=dict(EXCEPTION_HANDLERS),
        description=_DESCRIPTION,
        middleware=[
            Middleware(ResponseHeadersMiddleware),
            Middleware(ErrorBoundaryMiddleware),
            Middleware(
                BodyLimitMiddleware,
                max_bytes=settings.max_body_bytes,
                chunk_timeout_s=settings.body_timeout_s,
            ),
        ],
    )
    if max_message_bytes is None:
        max_message_bytes = KafkaSettings().max_message_bytes
    bind(app, backend, settings, max_message_bytes=max_message_bytes)
    app.state.schedules = schedules
    app.include_router(sagas.router)
    app.include_router(schedules_routes.router)
    app.include_router(health.router)
    if console is not None and settings.console.enabled:
        mount_console(app, console, settings)
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
