"""FastAPI dependencies for what every route needs: the backend, the HTTP settings, limits.

:func:`coordinator.api.app.create_api` keeps both in ``app.state``; routes take them as
parameters (``backend: BackendDep``), so the routers are plain module-level objects.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI, Request

from coordinator.api.backend import SagaBackend
from coordinator.config import HttpSettings

__all__ = [
    "BackendDep",
    "HttpSettingsDep",
    "MaxMessageBytesDep",
    "bind",
    "get_backend",
    "get_max_message_bytes",
    "get_settings",
]


def bind(
    app: FastAPI, backend: SagaBackend, settings: HttpSettings, *, max_message_bytes: int
) -> None:
    """Make ``backend``, ``settings`` and ``max_message_bytes`` what the getters below give."""
    app.state.backend = backend
    app.state.http_settings = settings
    app.state.max_message_bytes = max_message_bytes


def get_backend(request: Request) -> SagaBackend:
    """The backend the app was created over."""
    backend: SagaBackend = request.app.state.backend
    return backend


def get_settings(request: Request) -> HttpSettings:
    """The HTTP settings the app was created with."""
    settings: HttpSettings = request.app.state.http_settings
    return settings


def get_max_message_bytes(request: Request) -> int:
    """The largest Kafka record a start may lead to (``KafkaSettings.max_message_bytes``)."""
    limit: int = request.app.state.max_message_bytes
    return limit


BackendDep = Annotated[SagaBackend, Depends(get_backend)]
HttpSettingsDep = Annotated[HttpSettings, Depends(get_settings)]
MaxMessageBytesDep = Annotated[int, Depends(get_max_message_bytes)]
