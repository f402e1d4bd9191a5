"""The console's schedules page: every schedule with its next tick, last fired tick and
pause, and the pause and resume actions (a session and its CSRF token, like every action).

It reads and acts through the app's :class:`~coordinator.api.schedule_backend.ScheduleBackend`
(``app.state.schedules``); without one the page says so.
"""

from __future__ import annotations

import urllib.parse
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from coordinator.api.schedule_backend import ScheduleBackend
from coordinator.api.ui.routes import _actor, _field, _reader
from coordinator.core.schedule import ScheduleNotFoundError

__all__ = ["router"]

router = APIRouter(prefix="/ui", include_in_schema=False)


def _backend(request: Request) -> ScheduleBackend | None:
    backend: ScheduleBackend | None = getattr(request.app.state, "schedules", None)
    return backend


def _in(seconds: float) -> str:
    if seconds < 120:
        return f"in {max(seconds, 0):.0f} s"
    if seconds < 7_200:
        return f"in {seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"in {seconds / 3_600:.1f} h"
    return f"in {seconds / 86_400:.1f} days"


@router.get("/schedules")
async def schedules_page(request: Request) -> Response:
    ctx = _reader(request)
    backend = _backend(request)
    views = await backend.list_schedules() if backend is not None else []
    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "available": backend is not None,
        "schedules": views,
        "until_next": {
            v.name: _in((v.next_tick_at - now).total_seconds())
            for v in views
            if v.next_tick_at is not None
        },
        "done": request.query_params.get("done"),
        "done_name": request.query_params.get("name"),
        "now": now,
    }
    if request.headers.get("HX-Request") == "true":
        return ctx.render("_schedule_rows.html", **values)
    return ctx.render("schedules.html", **values)


async def _act(request: Request, name: str, *, pause: bool) -> Response:
    ctx, form = await _actor(request)
    assert ctx.session is not None
    backend = _backend(request)
    if backend is None:
        return ctx.render("error.html", 503, message="This console serves no schedules.")
    reason = (_field(form, "reason") or "").strip()
    if pause and not reason:
        return ctx.render("error.html", 400, message="Give a reason to pause: it is shown.")
    try:
        if pause:
            await backend.pause(name, actor=ctx.session.actor, reason=reason[:500])
        else:
            await backend.resume(name, actor=ctx.session.actor, reason=reason[:500] or None)
    except ScheduleNotFoundError as exc:
        return ctx.render("error.html", 404, message=str(exc))
    done = "paused" if pause else "resumed"
    query = urllib.parse.urlencode({"done": done, "name": name})
    return RedirectResponse(f"/ui/schedules?{query}", status_code=303)


@router.post("/schedules/{name}/pause")
async def pause_schedule(request: Request, name: str) -> Response:
    return await _act(request, name, pause=True)


@router.post("/schedules/{name}/resume")
async def resume_schedule(request: Request, name: str) -> Response:
    return await _act(request, name, pause=False)
