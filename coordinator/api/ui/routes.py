"""The console's pages under ``/ui``: login, sagas, one saga, actions, dead letters.

Every page is rendered on the server (Jinja2); htmx swaps in the parts that refresh while
sagas run and the dry-run previews. Reads need a session (or ``console.open_reads``); every
POST but the login needs a session and its CSRF token (:mod:`coordinator.api.ui.session`).
"""

from __future__ import annotations

import json
import math
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.datastructures import FormData

from coordinator.api.dependencies import get_settings
from coordinator.api.ui.backend import ConsoleBackend
from coordinator.api.ui.session import (
    COOKIE_NAME,
    CSRF_FIELD,
    CSRF_HEADER,
    ConsoleSession,
    SessionSigner,
)
from coordinator.api.ui.timeline import chart
from coordinator.api.validation import check_text
from coordinator.config import ConsoleSettings
from coordinator.core.business_keys import parse_business_key
from coordinator.core.errors import (
    DeadLetterNotFoundError,
    InvalidOperatorActionError,
    SagaNotFoundError,
)
from coordinator.core.state import SagaStatus
from coordinator.store.saga_queries import SagaFilter

__all__ = ["Halt", "router", "templates"]

PAGE_SIZE = 50
_ACTIVE = (SagaStatus.QUEUED, SagaStatus.RUNNING, SagaStatus.COMPENSATING)
_ACTIONS = ("retry", "abort")

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
router = APIRouter(prefix="/ui", include_in_schema=False)


class Halt(Exception):
    """Ends a request early with ``response`` (a redirect to the login, a refusal)."""

    def __init__(self, response: Response) -> None:
        super().__init__("halt")
        self.response = response


@dataclass(frozen=True)
class Context:
    """What every page handler needs: backend, settings, the session (None: anonymous)."""

    request: Request
    backend: ConsoleBackend
    signer: SessionSigner
    settings: ConsoleSettings
    session: ConsoleSession | None

    def render(self, template: str, status_code: int = 200, **values: Any) -> HTMLResponse:
        """The template rendered with the common values (session, CSRF token, settings)."""
        return templates.TemplateResponse(
            self.request,
            template,
            {
                "session": self.session,
                "csrf": self.signer.csrf_token(self.session) if self.session else "",
                "csrf_field": CSRF_FIELD,
                "csrf_header": CSRF_HEADER,
                "settings": self.settings,
                "partial": self.request.headers.get("HX-Request") == "true",
                **values,
            },
            status_code=status_code,
        )


def _context(request: Request) -> Context:
    signer: SessionSigner = request.app.state.console_signer
    return Context(
        request=request,
        backend=request.app.state.console,
        signer=signer,
        settings=get_settings(request).console,
        session=signer.read(request.cookies.get(COOKIE_NAME)),
    )


def _to_login(request: Request) -> Halt:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    location = "/ui/login?" + urllib.parse.urlencode({"next": target})
    if request.headers.get("HX-Request") == "true":
        return Halt(Response(status_code=401, headers={"HX-Redirect": location}))
    return Halt(RedirectResponse(location, status_code=303))


def _reader(request: Request) -> Context:
    ctx = _context(request)
    if ctx.session is None and not ctx.settings.open_reads:
        raise _to_login(request)
    return ctx


async def _actor(request: Request) -> tuple[Context, FormData]:
    """A POST by a logged-in operator with the session's CSRF token, and its form."""
    ctx = _context(request)
    if ctx.session is None:
        raise _to_login(request)
    form = await request.form()
    offered = request.headers.get(CSRF_HEADER) or _field(form, CSRF_FIELD)
    if not ctx.signer.check_csrf(ctx.session, offered):
        raise Halt(ctx.render("error.html", 403, message="The form's CSRF token is not valid."))
    return ctx, form


def _field(form: FormData, name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) else None


def _safe_next(target: str | None) -> str:
    # Only back into the console: a login must not become an open redirect.
    if target and target.startswith("/ui/") and not target.startswith("/ui//"):
        return target
    return "/ui/sagas"


def _now() -> datetime:
    return datetime.now(UTC)


# -- login -----------------------------------------------------------------------------


@router.get("/login")
async def login_page(request: Request, next: str | None = None) -> Response:
    ctx = _context(request)
    return ctx.render("login.html", next=_safe_next(next), error=None, name="")


@router.post("/login")
async def login(request: Request) -> Response:
    ctx = _context(request)
    form = await request.form()
    target = _safe_next(_field(form, "next"))
    name = _field(form, "name") or ""
    error = None
    if not ctx.signer.can_log_in:
        error = "No API token is configured (SAGA_HTTP__TOKEN): nobody can log in."
    elif not ctx.signer.check_token(_field(form, "token") or ""):
        error = "That token is not valid."
    else:
        try:
            actor = SessionSigner.check_actor(name)
        except ValueError as exc:
            error = str(exc)
    if error is not None:
        return ctx.render("login.html", 401, next=target, error=error, name=name)
    _, cookie = ctx.signer.issue(actor)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE_NAME,
        cookie,
        max_age=ctx.settings.session_ttl_s,
        path="/ui",
        secure=ctx.settings.secure_cookie,
        httponly=True,
        samesite="strict",
    )
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    await _actor(request)
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(COOKIE_NAME, path="/ui")
    return response


@router.get("")
@router.get("/")
async def home() -> Response:
    return RedirectResponse("/ui/sagas", status_code=303)


# -- sagas -----------------------------------------------------------------------------


def _parse_time(text: str | None, name: str) -> datetime | None:
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"{name}: not a date and time ({text!r})") from exc
    # A datetime-local input has no zone: the console shows and reads UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _saga_filter(params: Any) -> SagaFilter:
    """The filter a query string asks for.

    Raises:
        ValueError: A value is malformed (shown on the page, not a 500).
    """
    statuses = tuple(SagaStatus(s) for s in params.getlist("status") if s)
    version_text = params.get("version") or ""
    key = params.get("key") or None
    for name in ("type", "reason", "key", "q"):
        check_text(params.get(name) or "")
    return SagaFilter(
        statuses=statuses,
        saga_type=params.get("type") or None,
        definition_version=int(version_text) if version_text else None,
        started_from=_parse_time(params.get("from"), "started from"),
        started_until=_parse_time(params.get("until"), "started until"),
        failure_reason=params.get("reason") or None,
        business_key=parse_business_key(key) if key else None,
        saga_id_prefix=params.get("q") or None,
    )


def _query_without(params: Any, *names: str) -> str:
    kept = [(k, v) for k, v in params.multi_items() if k not in names and v]
    return urllib.parse.urlencode(kept)


@router.get("/sagas")
async def sagas_page(request: Request) -> Response:
    ctx = _reader(request)
    params = request.query_params
    try:
        f = _saga_filter(params)
        offset = max(0, int(params.get("offset") or 0))
    except ValueError as exc:
        return ctx.render("sagas.html", 400, error=str(exc), listing=None, params=params)
    listing = await ctx.backend.list_sagas(f, limit=PAGE_SIZE, offset=offset)
    values: dict[str, Any] = {
        "error": None,
        "listing": listing,
        "params": params,
        "filters": f,
        "statuses": list(SagaStatus),
        "saga_types": sorted(ctx.backend.saga_types()),
        "offset": offset,
        "page_size": PAGE_SIZE,
        "base_query": _query_without(params, "offset", "status"),
        "page_query": _query_without(params, "offset"),
        "refresh_query": request.url.query,
        "active": any(listing.counts.get(s, 0) for s in _ACTIVE),
        "now": _now(),
        "retention_days": (
            None if listing.retention_s is None else round(listing.retention_s / 86_400, 1)
        ),
    }
    if request.headers.get("HX-Request") == "true":
        return ctx.render("_saga_rows.html", **values)
    return ctx.render("sagas.html", **values)


async def _saga_values(ctx: Context, saga_id: str) -> dict[str, Any]:
    timeline = await ctx.backend.show(saga_id)
    instance = timeline.instance
    now = _now()
    trace_id = None
    if instance.traceparent:
        parts = instance.traceparent.split("-")
        trace_id = parts[1] if len(parts) == 4 else None
    trace_url = None
    if trace_id and ctx.settings.trace_url_template:
        trace_url = ctx.settings.trace_url_template.replace("{trace_id}", trace_id)
    ended = instance.updated_at if instance.is_terminal else None
    duration = ((ended or now) - instance.created_at).total_seconds()
    remaining = (
        (instance.deadline_at - now).total_seconds() if instance.deadline_at is not None else None
    )
    return {
        "saga": instance,
        "children": timeline.children,
        "history": timeline.history,
        "history_json": [
            (r, json.dumps(r.detail, indent=2, sort_keys=True, default=str))
            for r in timeline.history
        ],
        "data_json": json.dumps(instance.data, indent=2, sort_keys=True),
        "chart": chart(timeline.history, instance, now),
        "trace_id": trace_id,
        "trace_url": trace_url,
        "ended": ended,
        "duration": _seconds(duration),
        "remaining": None if remaining is None else math.ceil(remaining),
        "active": not instance.is_terminal,
        "now": now,
    }


def _seconds(value: float) -> str:
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.2f} s"
    return f"{value / 60:.1f} min"


@router.get("/sagas/{saga_id:path}/history.json")
async def saga_history_json(request: Request, saga_id: str) -> Response:
    ctx = _reader(request)
    try:
        timeline = await ctx.backend.show(saga_id)
    except SagaNotFoundError as exc:
        return ctx.render("error.html", 404, message=str(exc))
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in saga_id)
    return Response(
        json.dumps(timeline.as_dict(), indent=2),
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="saga-{safe}.json"'},
    )


@router.get("/sagas/{saga_id:path}/live")
async def saga_live(request: Request, saga_id: str) -> Response:
    ctx = _reader(request)
    try:
        values = await _saga_values(ctx, saga_id)
    except SagaNotFoundError as exc:
        return ctx.render("error.html", 404, message=str(exc))
    part = request.query_params.get("part", "top")
    return ctx.render("_saga_live.html", part="history" if part == "history" else "top", **values)


@router.post("/sagas/{saga_id:path}/preview")
async def action_preview(request: Request, saga_id: str) -> Response:
    ctx, form = await _actor(request)
    action, reason = _field(form, "action") or "", (_field(form, "reason") or "").strip()
    if action not in _ACTIONS:
        return ctx.render("_action_preview.html", 400, error=f"unknown action {action!r}")
    if not reason:
        return ctx.render("_action_preview.html", 400, error="Give a reason: it is recorded.")
    assert ctx.session is not None
    act = ctx.backend.retry if action == "retry" else ctx.backend.abort
    try:
        result = await act(saga_id, actor=ctx.session.actor, reason=reason, dry_run=True)
    except (SagaNotFoundError, InvalidOperatorActionError, ValueError) as exc:
        return ctx.render("_action_preview.html", 409, error=str(exc))
    return ctx.render(
        "_action_preview.html", error=None, result=result, saga_id=saga_id, reason=reason
    )


@router.post("/sagas/{saga_id:path}/act")
async def act(request: Request, saga_id: str) -> Response:
    ctx, form = await _actor(request)
    action, reason = _field(form, "action") or "", (_field(form, "reason") or "").strip()
    assert ctx.session is not None
    location = "/ui/sagas/" + urllib.parse.quote(saga_id, safe="")
    if action not in _ACTIONS or not reason:
        return ctx.render("error.html", 400, message="An action needs its name and a reason.")
    run = ctx.backend.retry if action == "retry" else ctx.backend.abort
    try:
        await run(saga_id, actor=ctx.session.actor, reason=reason, dry_run=False)
    except (SagaNotFoundError, InvalidOperatorActionError, ValueError) as exc:
        return ctx.render("error.html", 409, message=str(exc))
    return RedirectResponse(f"{location}?done={action}", status_code=303)


@router.get("/sagas/{saga_id:path}")
async def saga_page(request: Request, saga_id: str) -> Response:
    ctx = _reader(request)
    try:
        values = await _saga_values(ctx, saga_id)
    except SagaNotFoundError as exc:
        return ctx.render("error.html", 404, message=str(exc))
    return ctx.render("saga.html", done=request.query_params.get("done"), **values)


# -- dead letters ----------------------------------------------------------------------


def _position(text: str) -> tuple[str, int, int]:
    topic, partition, offset = text.rsplit("|", 2)
    return topic, int(partition), int(offset)


@router.get("/dead-letters")
async def dead_letters_page(request: Request) -> Response:
    ctx = _reader(request)
    params = request.query_params
    topic, reason = params.get("topic") or None, params.get("reason") or None
    listing = await ctx.backend.dead_letters(topic=topic, reason=reason)
    by_topic: dict[str, int] = {}
    for (t, _), n in listing.counts.items():
        by_topic[t] = by_topic.get(t, 0) + n
    return ctx.render(
        "dead_letters.html",
        listing=listing,
        topic=topic,
        reason=reason,
        by_topic=sorted(by_topic.items()),
        counts=sorted(listing.counts.items()),
        replayed_now=params.get("replayed"),
    )


@router.get("/dead-letters/{dlq_topic}/{partition}/{offset}")
async def dead_letter_page(
    request: Request, dlq_topic: str, partition: int, offset: int
) -> Response:
    ctx = _reader(request)
    try:
        letter, replayed = await ctx.backend.dead_letter(dlq_topic, partition, offset)
    except DeadLetterNotFoundError as exc:
        return ctx.render("error.html", 404, message=str(exc))
    body = None
    if letter.value is not None:
        text = letter.value.decode("utf-8", errors="replace")
        try:
            body = json.dumps(json.loads(text), indent=2, sort_keys=True)
        except ValueError:
            body = text
    return ctx.render(
        "dead_letter.html",
        letter=letter,
        replayed=replayed,
        body=body,
        headers=[
            (k, None if v is None else v.decode("utf-8", "replace")) for k, v in letter.headers
        ],
    )


async def _replay(request: Request, *, dry_run: bool) -> tuple[Context, Any, list[str]]:
    ctx, form = await _actor(request)
    chosen = [v for v in form.getlist("pos") if isinstance(v, str)]
    positions = [_position(v) for v in chosen]
    assert ctx.session is not None
    report = await ctx.backend.replay(positions, actor=ctx.session.actor, dry_run=dry_run)
    return ctx, report, chosen


@router.post("/dead-letters/replay/preview")
async def replay_preview(request: Request) -> Response:
    ctx, report, chosen = await _replay(request, dry_run=True)
    return ctx.render("_replay_preview.html", report=report, chosen=chosen)


@router.post("/dead-letters/replay")
async def replay(request: Request) -> Response:
    _, report, _ = await _replay(request, dry_run=False)
    return RedirectResponse(f"/ui/dead-letters?replayed={len(report.replayed)}", status_code=303)
