"""The operator console: server-rendered pages under ``/ui`` on the HTTP API's port.

:func:`mount_console` adds the pages (:mod:`coordinator.api.ui.routes`), their templates
and static files (htmx 2.0.11 from npm's ``htmx.org``, 0BSD licence, vendored: no CDN, no
JavaScript build) to the API's app. It reads and
acts through a :class:`~coordinator.api.ui.backend.ConsoleBackend`; logins and CSRF are in
:mod:`coordinator.api.ui.session`, the Gantt chart's layout in
:mod:`coordinator.api.ui.timeline`.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response

from coordinator.api.ui import schedules
from coordinator.api.ui.backend import ConsoleBackend
from coordinator.api.ui.routes import Halt, router
from coordinator.api.ui.session import SessionSigner
from coordinator.config import HttpSettings

__all__ = ["ConsoleBackend", "mount_console"]

_STATIC = Path(__file__).parent / "static"


async def _halt(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Halt)
    return exc.response


def mount_console(app: FastAPI, backend: ConsoleBackend, settings: HttpSettings) -> None:
    """Serve the console under ``/ui`` in ``app``, over ``backend``."""
    app.state.console = backend
    app.state.console_signer = SessionSigner(settings)
    app.add_exception_handler(Halt, _halt)
    app.mount("/ui/static", StaticFiles(directory=_STATIC), name="ui-static")
    app.include_router(router)
    app.include_router(schedules.router)
