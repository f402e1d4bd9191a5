"""The console's login, session cookie, CSRF checks and pages over an in-memory backend,
and the Gantt chart's reading of a history (no database, no Kafka, no browser)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Collection
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from pydantic import BaseModel, SecretStr

from coordinator.api.app import create_api
from coordinator.api.ui.session import COOKIE_NAME
from coordinator.api.ui.timeline import attempts, chart
from coordinator.config import ConsoleSettings, HttpSettings
from coordinator.core.business_keys import business_keys, parse_business_key
from coordinator.core.definition import SagaDefinition
from coordinator.core.errors import SagaDefinitionError
from coordinator.core.state import Awaited, AwaitKind, PendingSignal, SagaInstance, SagaStatus
from coordinator.ops.actions import ActionResult, SagaTimeline
from coordinator.ops.console import DeadLetterListing, SagaListing
from coordinator.ops.dead_letter_admin import ReplayReport, StoredDeadLetter
from coordinator.store.records import HistoryRecord
from coordinator.store.saga_queries import DataHorizon, SagaFilter
from saga_defs import OrderSaga
from tests.unit.test_http_api import ORDER, TOKEN, FakeBackend

BASE = "https://console.test"


class FakeConsole:
    """The console's backend over the HTTP API's in-memory fake."""

    def __init__(self, backend: FakeBackend) -> None:
        self.backend = backend
        self.acted: list[tuple[str, str, str, bool]] = []

    def saga_types(self) -> Collection[str]:
        return self.backend.saga_types()

    async def list_sagas(self, f: SagaFilter, *, limit: int, offset: int) -> SagaListing:
        found = [
            s
            for s in self.backend.sagas.values()
            if f.business_key is None or f.business_key in s.business_keys
        ]
        counts: dict[SagaStatus, int] = {}
        for s in found:
            counts[s.status] = counts.get(s.status, 0) + 1
        return SagaListing(found[offset : offset + limit], counts, DataHorizon(None, None), None)

    async def show(self, saga_id: str) -> SagaTimeline:
        return await self.backend.show(saga_id)

    async def retry(self, saga_id: str, *, actor: str, reason: str, dry_run: bool) -> ActionResult:
        self.acted.append(("retry", saga_id, actor, dry_run))
        return await self.backend.retry(saga_id, actor=actor, reason=reason, dry_run=dry_run)

    async def abort(self, saga_id: str, *, actor: str, reason: str, dry_run: bool) -> ActionResult:
        self.acted.append(("abort", saga_id, actor, dry_run))
        return await self.backend.abort(saga_id, actor=actor, reason=reason, dry_run=dry_run)

    async def dead_letters(self, *, topic: str | None, reason: str | None) -> DeadLetterListing:
        return DeadLetterListing([], set(), {})

    async def dead_letter(
        self, dlq_topic: str, partition: int, offset: int
    ) -> tuple[StoredDeadLetter, bool]:
        raise AssertionError("not used")

    async def replay(
        self, positions: Collection[tuple[str, int, int]], *, actor: str, dry_run: bool
    ) -> ReplayReport:
        return ReplayReport(dry_run=dry_run)


@pytest.fixture
async def console() -> FakeConsole:
    backend = FakeBackend()
    await backend.start_saga("order", ORDER, saga_id="s-1", traceparent=None)
    return FakeConsole(backend)


def _client(console: FakeConsole, **settings: Any) -> httpx.AsyncClient:
    http = HttpSettings(token=SecretStr(TOKEN), console=ConsoleSettings(**settings))
    app = create_api(console.backend, http, console=console)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE)


@pytest.fixture
async def ui(console: FakeConsole) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(console) as client:
        yield client


async def _log_in(ui: httpx.AsyncClient, name: str = "carol") -> httpx.Response:
    return await ui.post("/ui/login", data={"name": name, "token": TOKEN, "next": "/ui/sagas"})


def _csrf(page: httpx.Response) -> str:
    found = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page.text)
    assert found, "no CSRF token in the page"
    return found.group(1)


async def test_pages_send_anonymous_visitors_to_the_login(ui: httpx.AsyncClient) -> None:
    for path in ("/ui/sagas", "/ui/sagas/s-1", "/ui/dead-letters"):
        answer = await ui.get(path)
        assert answer.status_code == 303
        assert answer.headers["location"].startswith("/ui/login?next=")
    # htmx refreshes are told where to go instead of following a redirect into a fragment.
    partial = await ui.get("/ui/sagas/s-1/live", headers={"HX-Request": "true"})
    assert (partial.status_code, partial.headers["HX-Redirect"][:10]) == (401, "/ui/login?")


async def test_login_refuses_a_wrong_token_and_sets_a_signed_cookie_without_it(
    ui: httpx.AsyncClient,
) -> None:
    wrong = await ui.post("/ui/login", data={"name": "carol", "token": "nope"})
    assert wrong.status_code == 401
    assert "set-cookie" not in wrong.headers
    answer = await _log_in(ui)
    assert (answer.status_code, answer.headers["location"]) == (303, "/ui/sagas")
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE_NAME}=")
    for flag in ("HttpOnly", "Secure", "SameSite=strict", "Path=/ui"):
        assert flag in cookie
    assert TOKEN not in cookie
    assert (await ui.get("/ui/sagas")).status_code == 200
    # A cookie changed by hand is no session.
    value = ui.cookies[COOKIE_NAME]
    ui.cookies.set(COOKIE_NAME, value[:-2] + ("AA" if value[-2:] != "AA" else "BB"), path="/ui")
    assert (await ui.get("/ui/sagas")).status_code == 303


async def test_login_goes_back_only_into_the_console(ui: httpx.AsyncClient) -> None:
    for target in ("https://evil.example/", "//evil.example/ui/", "/ui//evil.example"):
        answer = await ui.post("/ui/login", data={"name": "carol", "token": TOKEN, "next": target})
        assert answer.headers["location"] == "/ui/sagas"


async def test_actions_need_the_session_csrf_token_and_are_attributed_to_the_actor(
    ui: httpx.AsyncClient, console: FakeConsole
) -> None:
    await _log_in(ui, "carol")
    form = {"action": "abort", "reason": "stuck"}
    for csrf in (None, "0" * 64):
        refused = await ui.post(
            "/ui/sagas/s-1/act", data={**form, **({"csrf_token": csrf} if csrf else {})}
        )
        assert refused.status_code == 403
    assert console.acted == []
    csrf = _csrf(await ui.get("/ui/sagas/s-1"))
    preview = await ui.post("/ui/sagas/s-1/preview", data={**form, "csrf_token": csrf})
    assert preview.status_code == 200
    assert "RUNNING → <b>COMPENSATING</b>" in preview.text
    assert console.backend.sagas["s-1"].status is SagaStatus.RUNNING
    # htmx sends the token as a header.
    done = await ui.post("/ui/sagas/s-1/act", data=form, headers={"X-CSRF-Token": csrf})
    assert (done.status_code, done.headers["location"]) == (303, "/ui/sagas/s-1?done=abort")
    assert console.acted == [("abort", "s-1", "carol", True), ("abort", "s-1", "carol", False)]
    assert console.backend.sagas["s-1"].status is SagaStatus.COMPENSATING


async def test_an_action_without_a_reason_is_refused(ui: httpx.AsyncClient) -> None:
    await _log_in(ui)
    csrf = _csrf(await ui.get("/ui/sagas/s-1"))
    answer = await ui.post(
        "/ui/sagas/s-1/preview", data={"action": "abort", "reason": " ", "csrf_token": csrf}
    )
    assert answer.status_code == 400
    assert "reason" in answer.text


async def test_open_reads_show_pages_without_a_login_but_no_actions(
    console: FakeConsole,
) -> None:
    async with _client(console, open_reads=True) as ui:
        page = await ui.get("/ui/sagas/s-1")
        assert page.status_code == 200
        assert "Sign in</a> to retry or abort" in page.text
        answer = await ui.post("/ui/sagas/s-1/act", data={"action": "abort", "reason": "x"})
        assert answer.headers["location"].startswith("/ui/login")
    assert console.acted == []


async def test_a_business_key_search_reaches_the_backend(ui: httpx.AsyncClient) -> None:
    await _log_in(ui)
    found = await ui.get("/ui/sagas", params={"key": "order_id=o-1"})
    assert 'data-saga-id="s-1"' in found.text
    none = await ui.get("/ui/sagas", params={"key": "order_id=o-2"})
    assert 'data-saga-id="s-1"' not in none.text
    bad = await ui.get("/ui/sagas", params={"key": "order_id"})
    assert bad.status_code == 400
    assert "name=value" in bad.text


async def test_saga_data_is_escaped_in_the_pages(
    ui: httpx.AsyncClient, console: FakeConsole
) -> None:
    evil = "<script>alert(1)</script>"
    await console.backend.start_saga(
        "order", {**ORDER, "order_id": evil}, saga_id="s-evil", traceparent=None
    )
    await _log_in(ui)
    for path in ("/ui/sagas", "/ui/sagas/s-evil"):
        page = await ui.get(path)
        assert evil not in page.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text


async def test_the_saga_page_links_parent_and_children(
    ui: httpx.AsyncClient, console: FakeConsole
) -> None:
    await console.backend.start_saga("order", ORDER, saga_id="kid-1", traceparent=None)
    sagas = console.backend.sagas
    sagas["kid-1"] = replace(sagas["kid-1"], parent_saga_id="s-1", parent_step="points")
    await _log_in(ui)
    parent = await ui.get("/ui/sagas/s-1")
    assert 'href="/ui/sagas/kid-1"' in parent.text
    assert "for points" in parent.text
    child = await ui.get("/ui/sagas/kid-1")
    assert 'id="parent"><a href="/ui/sagas/s-1"' in child.text
    assert "kept-signals" not in child.text
    sagas["kid-1"] = replace(
        sagas["kid-1"], pending_signals=(PendingSignal("sig-9", "approval", {}),)
    )
    kept = await ui.get("/ui/sagas/kid-1")
    assert "<code>approval</code>" in kept.text
    assert "sig-9" in kept.text


async def test_the_console_is_not_in_the_openapi_document(console: FakeConsole) -> None:
    app = create_api(console.backend, HttpSettings(token=SecretStr(TOKEN)), console=console)
    assert not [p for p in app.openapi()["paths"] if p.startswith("/ui")]


# -- business keys ---------------------------------------------------------------------


def test_business_keys_are_stored_as_name_value() -> None:
    assert business_keys(
        ("order_id", "amount", "gone", "nested"),
        {
            "order_id": "A-1",
            "amount": 5,
            "nested": {"x": 1},
        },
    ) == ("order_id=A-1", "amount=5")
    assert parse_business_key(" order_id = A-1 ") == "order_id=A-1"
    for bad in ("order_id", "=x", "order_id="):
        with pytest.raises(ValueError, match="name=value"):
            parse_business_key(bad)


def test_a_search_key_must_be_a_field_of_the_data_model() -> None:
    class Data(BaseModel):
        order_id: str

    with pytest.raises(SagaDefinitionError, match="search_keys"):

        class Wrong(SagaDefinition[Data]):
            name = "wrong"
            data_model = Data
            steps = OrderSaga.steps
            search_keys = ("customer_id",)


async def test_a_started_saga_carries_its_business_keys(console: FakeConsole) -> None:
    assert console.backend.sagas["s-1"].business_keys == ("order_id=o-1", "customer_id=c-1")


# -- the Gantt chart -------------------------------------------------------------------

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _at(ms: int) -> datetime:
    return T0 + timedelta(milliseconds=ms)


def _record(n: int, ms: int, kind: str, step: str, **detail: Any) -> HistoryRecord:
    return HistoryRecord(n, "s", _at(ms), kind, step, None, detail)


def _saga(**changes: Any) -> SagaInstance:
    values: dict[str, Any] = {
        "saga_id": "s",
        "saga_type": "order",
        "definition_version": 1,
        "status": SagaStatus.RUNNING,
        "data": {},
        "created_at": T0,
        "updated_at": _at(900),
        **changes,
    }
    return SagaInstance(**values)


def test_every_attempt_is_a_bar_with_its_pickup_answer_and_outcome() -> None:
    deadline = _at(400).isoformat()
    history = [
        _record(1, 0, "started", ""),
        _record(2, 0, "command_sent", "reserve", command_id="c1", attempt=1, deadline_at=deadline),
        _record(3, 400, "deadline_missed", "reserve", command_id="c1", attempt=1, deadline=True),
        _record(4, 500, "command_sent", "reserve", command_id="c1", attempt=2, purpose="retry"),
        _record(5, 550, "command_picked_up", "reserve", command_id="c1", attempt=2),
        _record(6, 600, "step_succeeded", "reserve", command_id="c1", attempt=2),
        _record(7, 600, "command_sent", "charge", command_id="c2", attempt=1),
        _record(8, 700, "step_failed", "charge", command_id="c2", attempt=1, error="declined"),
        _record(
            9,
            700,
            "compensation_sent",
            "reserve",
            command_id="u1",
            attempt=1,
            purpose="compensation",
        ),
    ]
    instance = _saga(status=SagaStatus.COMPENSATING, command_id="u1", attempt=1)
    found = attempts(history, instance)
    assert [(a.step, a.attempt, a.outcome) for a in found] == [
        ("reserve", 1, "timed_out"),
        ("reserve", 2, "succeeded"),
        ("charge", 1, "failed"),
        ("reserve", 1, "pending"),
    ]
    assert found[1].picked_up_at == _at(550)
    assert found[2].error == "declined"
    assert [a.compensating for a in found] == [False, False, False, True]
    drawn = chart(history, instance, _at(800))
    assert [b.label for b in drawn.bars] == [
        "reserve #1",
        "reserve #2",
        "charge #1",
        "↩ reserve #1",
    ]
    first, second = drawn.bars[0], drawn.bars[1]
    assert first.deadline_x == pytest.approx(first.x + first.width)
    assert second.queued_width > 0  # sent at 500 ms, picked up at 550 ms
    assert drawn.now_x is not None


def test_an_unanswered_attempt_the_saga_no_longer_awaits_is_abandoned() -> None:
    history = [
        _record(1, 0, "command_sent", "reserve", command_id="c1", attempt=1),
        _record(2, 100, "operator_action", "reserve", actor="dan", action="abort", reason="x"),
        _record(
            3, 100, "compensation_sent", "reserve", command_id="u1", attempt=1, purpose="fence"
        ),
        _record(4, 200, "compensation_succeeded", "reserve", command_id="u1", attempt=1),
        _record(5, 200, "compensated", ""),
    ]
    instance = _saga(status=SagaStatus.COMPENSATED, updated_at=_at(200))
    assert [a.outcome for a in attempts(history, instance)] == ["abandoned", "succeeded"]
    drawn = chart(history, instance, _at(5_000))
    assert [m.label for m in drawn.markers] == ["abort by dan", "COMPENSATED"]
    assert drawn.now_x is None


def test_waits_and_child_sagas_are_rows_of_the_timeline() -> None:
    history = [
        _record(1, 0, "started", ""),
        _record(
            2, 0, "signal_awaited", "approve", signal="approval", deadline_at=_at(900).isoformat()
        ),
        _record(3, 300, "signal_received", "approve", signal="approval", signal_id="a1"),
        _record(4, 300, "child_started", "points", command_id="kid", attempt=1, purpose="forward"),
        _record(5, 500, "step_succeeded", "points", command_id="kid", attempt=1),
        _record(6, 500, "timer_set", "remind", fire_at=_at(2_000).isoformat()),
        _record(
            7, 600, "signal_awaited", "confirm", signal="confirm", deadline_at=_at(700).isoformat()
        ),
        _record(8, 700, "deadline_missed", "confirm", deadline=True),
    ]
    instance = _saga(awaiting=(Awaited("remind", "t-remind", 1, _at(2_000), kind=AwaitKind.TIMER),))
    found = attempts(history, instance)
    assert [(a.step, a.kind, a.outcome) for a in found] == [
        ("approve", "signal", "succeeded"),
        ("points", "child", "succeeded"),
        ("remind", "timer", "pending"),
        ("confirm", "signal", "timed_out"),
    ]
    assert found[2].deadline_at == _at(2_000)  # the timer's fire time
    drawn = chart(history, instance, _at(800))
    assert [b.label for b in drawn.bars] == [
        "✉ approve #1",
        "⇢ points #1",
        "◔ remind #1",
        "✉ confirm #1",
    ]
