"""The coordinator's HTTP API: start sagas, inspect them, retry or abort them; health checks.

``create_api(backend, settings)`` assembles the FastAPI app from the module-level routers in
:mod:`coordinator.api.routes` over a :class:`~coordinator.api.backend.SagaBackend` (a running
coordinator is adapted by ``coordinator.app.CoordinatorBackend``; unit tests pass an in-memory
fake). Authentication is in :mod:`coordinator.api.auth`, the JSON error answers in
:mod:`coordinator.api.errors`.

The OpenAPI schema is served at ``/openapi.json`` and committed as ``docs/openapi.json``
(regenerate with ``python -m coordinator.api.app > docs/openapi.json``; a unit test keeps the
two equal).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

from coordinator.api.backend import SagaBackend
from coordinator.api.dependencies import bind
from coordinator.api.errors import EXCEPTION_HANDLERS
from coordinator.api.routes import health, sagas
from coordinator.config import HttpSettings

__all__ = ["API_VERSION", "create_api", "openapi_document"]

API_VERSION = "1.0.0"
"""The HTTP contract's version (not the package's): bump it when the schema changes."""


def _operation_id(route: APIRoute) -> str:
    # The handlers' names (start_saga, get_saga, ...): stable for generated clients.
    return route.name


def create_api(backend: SagaBackend, settings: HttpSettings) -> FastAPI:
    """The HTTP API over ``backend``; ``settings.token`` guards the mutating endpoints."""
    app = FastAPI(
        title="Saga coordinator",
        version=API_VERSION,
        generate_unique_id_function=_operation_id,
        exception_handlers=dict(EXCEPTION_HANDLERS),
        description=(
            "Start sagas, follow them, and retry or abort them. Mutating endpoints need "
            "`Authorization: Bearer <token>` (`SAGA_HTTP__TOKEN`); with no token configured "
            "they are refused (403). Errors are JSON `ErrorResponse` objects."
        ),
    )
    bind(app, backend, settings)
    app.include_router(sagas.router)
    app.include_router(health.router)
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
