"""FastAPI dependencies for what every route needs: the backend and the HTTP settings.

:func:`coordinator.api.app.create_api` keeps both in ``app.state``; routes take them as
parameters (``backend: BackendDep``), so the routers are plain module-level objects.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI, Request

from coordinator.api.backend import SagaBackend
from coordinator.config import HttpSettings

__all__ = ["BackendDep", "HttpSettingsDep", "bind", "get_backend", "get_settings"]


def bind(app: FastAPI, backend: SagaBackend, settings: HttpSettings) -> None:
    """Make ``backend`` and ``settings`` what :func:`get_backend` and :func:`get_settings` give."""
    app.state.backend = backend
    app.state.http_settings = settings


def get_backend(request: Request) -> SagaBackend:
    """The backend the app was created over."""
    backend: SagaBackend = request.app.state.backend
    return backend


def get_settings(request: Request) -> HttpSettings:
    """The HTTP settings the app was created with."""
    settings: HttpSettings = request.app.state.http_settings
    return settings


BackendDep = Annotated[SagaBackend, Depends(get_backend)]
HttpSettingsDep = Annotated[HttpSettings, Depends(get_settings)]
