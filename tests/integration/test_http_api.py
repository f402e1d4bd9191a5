"""The HTTP API of a running coordinator over real HTTP, Kafka and PostgreSQL; and the HTTP
server's connection limits and error logging over real sockets (those need no services)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from coordinator.api.app import create_api
from coordinator.api.server import HttpServer
from coordinator.app import Coordinator
from coordinator.config import HttpSettings, Settings
from coordinator.core.state import SagaStatus
from coordinator.observability.tracing import is_valid_traceparent
from coordinator.store.database import create_engine
from service_sdk import Topics
from tests.support.outbox import outbox_sent
from tests.unit.test_http_hardening import FailingBackend

TOKEN = "integration-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ORDER: dict[str, Any] = {
    "order_id": "o-1",
    "customer_id": "c-1",
    "items": [{"sku": "sku-1", "quantity": 2}],
    "amount_cents": 1250,
}


@contextlib.asynccontextmanager
async def _serving(
    settings: Settings, running_coordinator: Any
) -> AsyncIterator[tuple[Coordinator, httpx.AsyncClient]]:
    settings.http.token = SecretStr(TOKEN)
    async with running_coordinator(settings) as coordinator:
        assert coordinator.http is not None
        await coordinator.http.wait_started()
        base_url = f"http://127.0.0.1:{coordinator.http.port}"
        async with httpx.AsyncClient(base_url=base_url, timeout=15.0) as client:
            yield coordinator, client


@pytest.fixture
async def served(
    coordinator_settings: Settings, running_coordinator: Any
) -> AsyncIterator[tuple[Coordinator, httpx.AsyncClient]]:
    """A running coordinator with an API token, and an HTTP client to its API."""
    async with _serving(coordinator_settings, running_coordinator) as pair:
        yield pair


async def _no_sagas(coordinator: Coordinator) -> None:
    async with coordinator.store.engine.connect() as conn:
        assert await coordinator.store.select_sagas(conn) == [], "a refused request wrote"


async def test_start_is_idempotent_and_the_saga_can_be_read_and_listed(
    served: tuple[Coordinator, httpx.AsyncClient], topic_reader: Any
) -> None:
    coordinator, api = served
    topics = Topics(coordinator.settings.kafka.topic_prefix)
    for _ in range(2):
        started = await api.post(
            "/sagas/order", params={"saga_id": "h-1"}, json=ORDER, headers=AUTH
        )
        assert started.status_code == 202, started.text
        assert started.json() == {"saga_id": "h-1", "saga_type": "order", "location": "/sagas/h-1"}
    keyed = await api.post(
        "/sagas/order",
        json={**ORDER, "order_id": "o-2"},
        headers={**AUTH, "Idempotency-Key": "h-2"},
    )
    assert (keyed.status_code, keyed.json()["saga_id"]) == (202, "h-2")

    # Started once: one reserve command for h-1, whatever the number of requests.
    async with topic_reader(topics.commands("inventory")) as inventory:
        commands = await inventory.envelopes(2)
        # Each start was committed before its response: once the outbox is sent, the topic
        # holds every command they led to.
        await outbox_sent(coordinator.store)
        assert await inventory.published() == []
    assert sorted(c.saga_id for c in commands) == ["h-1", "h-2"]

    shown = await api.get("/sagas/h-1", headers=AUTH)
    assert shown.status_code == 200
    body = shown.json()
    assert body["saga"]["status"] == "RUNNING"
    assert body["saga"]["current_step"] == "reserve_inventory"
    assert is_valid_traceparent(body["saga"]["traceparent"])
    assert [h["kind"] for h in body["history"]] == ["started", "command_sent"]

    listed = await api.get(
        "/sagas", params={"status": "RUNNING", "saga_type": "order"}, headers=AUTH
    )
    assert listed.status_code == 200
    assert sorted(s["saga_id"] for s in listed.json()["items"]) == ["h-1", "h-2"]
    page = (await api.get("/sagas", params={"limit": 1}, headers=AUTH)).json()
    assert (len(page["items"]), page["next_offset"]) == (1, 1)
    second = (await api.get("/sagas", params={"limit": 1, "offset": 1}, headers=AUTH)).json()
    assert {page["items"][0]["saga_id"], second["items"][0]["saga_id"]} == {"h-1", "h-2"}
    completed = await api.get("/sagas", params={"status": "COMPLETED"}, headers=AUTH)
    assert completed.json()["items"] == []
    other = await api.get("/sagas", params={"saga_type": "other"}, headers=AUTH)
    assert other.json()["items"] == []


async def test_bad_requests_get_clear_4xx_answers(
    served: tuple[Coordinator, httpx.AsyncClient],
) -> None:
    coordinator, api = served
    missing = await api.get("/sagas/no-such-saga", headers=AUTH)
    assert (missing.status_code, missing.json()["error"]) == (404, "saga_not_found")
    unknown_type = await api.post("/sagas/no-such-type", json=ORDER, headers=AUTH)
    assert (unknown_type.status_code, unknown_type.json()["error"]) == (404, "unknown_saga_type")

    bad_data = await api.post("/sagas/order", json={**ORDER, "amount_cents": 0}, headers=AUTH)
    assert bad_data.status_code == 422
    assert bad_data.json()["error"] == "invalid_saga_data"
    assert bad_data.json()["errors"][0]["loc"] == ["body", "amount_cents"]
    not_json = await api.post(
        "/sagas/order", content=b"{", headers={**AUTH, "Content-Type": "application/json"}
    )
    assert (not_json.status_code, not_json.json()["error"]) == (422, "invalid_request")

    for params in ({"status": "FINISHED"}, {"limit": 0}, {"limit": 5000}, {"offset": -3}):
        bad_query = await api.get("/sagas", params=params, headers=AUTH)
        assert bad_query.status_code == 422, params
        assert bad_query.json()["errors"][0]["loc"][0] == "query"
    bad_dry_run = await api.post(
        "/sagas/x/retry", params={"dry_run": "perhaps"}, json={"reason": "r"}, headers=AUTH
    )
    assert bad_dry_run.status_code == 422
    no_reason = await api.post("/sagas/x/abort", json={}, headers=AUTH)
    assert no_reason.status_code == 422

    async with coordinator.store.engine.connect() as conn:
        assert await coordinator.store.select_sagas(conn) == [], "a bad request started a saga"


async def test_mutations_and_reads_need_the_token(
    served: tuple[Coordinator, httpx.AsyncClient],
) -> None:
    coordinator, api = served
    for path in ("/sagas/order", "/sagas/h-1/retry", "/sagas/h-1/abort"):
        anonymous = await api.post(path, json={**ORDER, "reason": "r"})
        assert anonymous.status_code == 401, path
        assert anonymous.headers["www-authenticate"].startswith("Bearer")
        wrong = await api.post(
            path, json={**ORDER, "reason": "r"}, headers={"Authorization": "Bearer nope"}
        )
        assert wrong.status_code == 401, path
        assert wrong.json()["error"] == "invalid_token"
    for path in ("/sagas", "/sagas/h-1"):
        anonymous = await api.get(path)
        assert (anonymous.status_code, anonymous.json()["error"]) == (401, "unauthorized"), path
    assert (await api.get("/sagas", headers=AUTH)).status_code == 200
    for path in ("/health", "/ready", "/openapi.json", "/docs"):
        assert (await api.get(path)).status_code == 200, path
    await _no_sagas(coordinator)


async def test_retry_and_abort_with_dry_runs(
    served: tuple[Coordinator, httpx.AsyncClient], topic_reader: Any
) -> None:
    coordinator, api = served
    topics = Topics(coordinator.settings.kafka.topic_prefix)
    await api.post("/sagas/order", params={"saga_id": "h-3"}, json=ORDER, headers=AUTH)
    async with topic_reader(topics.commands("inventory")) as inventory:
        (first,) = await inventory.envelopes(1)
        assert first.attempt == 1

        rehearsal = await api.post(
            "/sagas/h-3/retry", params={"dry_run": "true"}, json={"reason": "try"}, headers=AUTH
        )
        assert rehearsal.status_code == 200, rehearsal.text
        assert rehearsal.json()["dry_run"] is True
        assert [c["attempt"] for c in rehearsal.json()["commands"]] == [2]
        assert rehearsal.json()["outbox_ids"] == []
        await outbox_sent(coordinator.store)
        assert await inventory.published() == [], "a dry run sent a command"

        retried = await api.post(
            "/sagas/h-3/retry", json={"reason": "stuck", "actor": "ops@example"}, headers=AUTH
        )
        assert retried.status_code == 200, retried.text
        assert retried.json()["status_after"] == "RUNNING"
        (again,) = await inventory.envelopes(1)
        assert (again.attempt, again.command_id) == (2, first.command_id)

    aborted_dry = await api.post(
        "/sagas/h-3/abort", params={"dry_run": "1"}, json={"reason": "stop"}, headers=AUTH
    )
    assert aborted_dry.status_code == 200
    async with coordinator.store.engine.connect() as conn:
        saga = await coordinator.store.select_saga(conn, "h-3")
    assert saga is not None
    assert saga.status is SagaStatus.RUNNING, "a dry run changed the saga"

    aborted = await api.post("/sagas/h-3/abort", json={"reason": "customer left"}, headers=AUTH)
    assert aborted.status_code == 200, aborted.text
    assert aborted.json()["status_before"] == "RUNNING"
    assert aborted.json()["actor"] == "http-api"
    # The reservation in flight is undone (or fenced) before the saga can end.
    assert aborted.json()["status_after"] == "COMPENSATING"
    ignored = await api.post("/sagas/h-3/abort", json={"reason": "again"}, headers=AUTH)
    assert ignored.status_code == 200, ignored.text
    assert ignored.json()["status_after"] == "COMPENSATING"
    assert ignored.json()["commands"] == []
    unknown = await api.post("/sagas/nope/retry", json={"reason": "r"}, headers=AUTH)
    assert unknown.status_code == 404

    history = (await api.get("/sagas/h-3", headers=AUTH)).json()["history"]
    actions = [h["detail"] for h in history if h["kind"] == "operator_action"]
    assert [(a.get("actor"), a.get("reason")) for a in actions] == [
        ("ops@example", "stuck"),
        ("http-api", "customer left"),
        ("http-api", "again"),
    ]


async def test_health_ready_and_schema(served: tuple[Coordinator, httpx.AsyncClient]) -> None:
    coordinator, api = served
    assert (await api.get("/health")).json() == {"status": "ok"}
    ready = await api.get("/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": True, "consumer": True}
    schema = (await api.get("/openapi.json")).json()
    assert "/sagas/{saga_id}/retry" in schema["paths"]

    await coordinator.consumer.stop()
    not_ready = await api.get("/ready")
    assert not_ready.status_code == 503
    assert not_ready.json()["checks"] == {"database": True, "consumer": False}
    assert (await api.get("/health")).status_code == 200


# -- hardening: what an attacker's run found ---------------------------------------------------


async def test_hostile_input_gets_a_4xx_never_a_500(
    served: tuple[Coordinator, httpx.AsyncClient],
) -> None:
    coordinator, api = served
    nul_order = {**ORDER, "order_id": "o-\x00"}
    refused: list[tuple[int, httpx.Response]] = [
        (413, await api.post("/sagas/order", content=b"{" * (50 * 1_048_576), headers=AUTH)),
        (422, await api.get("/sagas/a%00b", headers=AUTH)),
        (422, await api.get("/sagas", params={"saga_type": "o\x00"}, headers=AUTH)),
        (422, await api.get("/sagas", params={"offset": 2**63}, headers=AUTH)),
        (422, await api.get("/sagas", params={"offset": 2**64 + 5}, headers=AUTH)),
        (422, await api.post("/sagas/order", json=nul_order, headers=AUTH)),
        (
            422,
            await api.post("/sagas/order", params={"saga_id": "a\x00"}, json=ORDER, headers=AUTH),
        ),
        (
            422,
            await api.post(
                "/sagas/order",
                content=b'{"order_id": "o-1", "amount_cents": NaN}',
                headers={**AUTH, "Content-Type": "application/json"},
            ),
        ),
        (422, await api.post("/sagas/a%00/retry", json={"reason": "r"}, headers=AUTH)),
        (422, await api.post("/sagas/x/abort", json={"reason": "r\x00"}, headers=AUTH)),
    ]
    for expected, response in refused:
        assert response.status_code == expected, (response.request.url, response.text)
        assert response.json()["error"] in {"invalid_request", "payload_too_large"}
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["cache-control"] == "no-store"
    await _no_sagas(coordinator)


async def test_a_start_too_large_for_one_kafka_message_is_refused_and_not_stored(
    coordinator_settings: Settings, running_coordinator: Any
) -> None:
    # The body cap is raised past the order, so that the message check is what refuses it.
    coordinator_settings.http.max_body_bytes = 4 * 1_048_576
    items = [{"sku": f"sku-{n:059d}", "quantity": 10_000} for n in range(20_000)]
    async with _serving(coordinator_settings, running_coordinator) as (coordinator, api):
        response = await api.post(
            "/sagas/order", params={"saga_id": "big"}, json={**ORDER, "items": items}, headers=AUTH
        )
        assert len(response.request.content) > 1_800_000
        assert response.status_code == 413, response.text
        assert response.json()["error"] == "message_too_large"
        await _no_sagas(coordinator)
        fits = await api.post("/sagas/order", json=ORDER, headers=AUTH)
        assert fits.status_code == 202, fits.text


async def test_reusing_an_idempotency_key_with_another_body_is_409(
    served: tuple[Coordinator, httpx.AsyncClient],
) -> None:
    coordinator, api = served
    keyed = {**AUTH, "Idempotency-Key": "idem-1"}
    assert (await api.post("/sagas/order", json=ORDER, headers=keyed)).status_code == 202
    other = await api.post("/sagas/order", json={**ORDER, "amount_cents": 5}, headers=keyed)
    assert (other.status_code, other.json()["error"]) == (409, "idempotency_conflict")
    # The answer names the stored saga, which stands unchanged.
    assert other.json()["saga_id"] == "idem-1"
    assert other.headers["location"] == "/sagas/idem-1"
    again = await api.post("/sagas/order", json=ORDER, headers=keyed)
    assert (again.status_code, again.json()["saga_id"]) == (202, "idem-1")
    async with coordinator.store.engine.connect() as conn:
        saga = await coordinator.store.select_saga(conn, "idem-1")
        history = await coordinator.store.select_history(conn, "idem-1")
    assert saga is not None
    assert saga.data["amount_cents"] == ORDER["amount_cents"]
    (refused,) = [h for h in history if h.kind == "conflicting_start"]
    assert refused.detail["data"]["amount_cents"] == 5
    assert [h.kind for h in history].count("duplicate_start") == 0


async def test_database_errors_do_not_quote_statement_parameters(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            with pytest.raises(DBAPIError) as failed:
                await conn.execute(text("SELECT CAST(:v AS text), 1 / 0"), {"v": "SECRET-4711"})
    finally:
        await engine.dispose()
    assert "division by zero" in str(failed.value)
    assert "SECRET-4711" not in str(failed.value)


# -- the server itself: no Kafka or PostgreSQL needed ------------------------------------------


@contextlib.asynccontextmanager
async def _server(app: Any, **settings: Any) -> AsyncIterator[int]:
    server = HttpServer(app, HttpSettings(port=0, **settings))
    server.start()
    task = asyncio.create_task(server.run())
    try:
        await server.wait_started()
        assert server.port is not None
        yield server.port
    finally:
        server.stop()
        await task


async def _hello(
    scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]
) -> None:
    assert scope["type"] == "http"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


async def test_a_connection_whose_headers_never_finish_is_closed() -> None:
    async with _server(_hello, header_timeout_s=0.5, keep_alive_timeout_s=60) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # and nothing more
            await writer.drain()
            async with asyncio.timeout(10):
                assert await reader.read() == b"", "the server answered a request never sent"
        finally:
            writer.close()
        # A request whose headers arrive in time is served, however slow the connection was.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            async with asyncio.timeout(10):
                answer = await reader.read()
            assert answer.startswith(b"HTTP/1.1 200")
            assert b"hello" in answer
        finally:
            writer.close()


async def test_headers_past_the_limit_are_refused() -> None:
    async with _server(_hello, max_header_bytes=2_048) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4_096)
            await writer.drain()
            async with asyncio.timeout(10):
                answer = await reader.read()
            assert answer.startswith(b"HTTP/1.1 400")
        finally:
            writer.close()


async def test_a_failing_request_is_logged_once_by_the_served_api(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    settings = HttpSettings(port=0, token=SecretStr(TOKEN))
    app = create_api(FailingBackend(), settings)
    secret = {**ORDER, "customer_id": "SECRET-CUSTOMER-4711"}
    async with (
        _server(app, token=SecretStr(TOKEN)) as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as api,
    ):
        response = await api.post("/sagas/order", json=secret, headers=AUTH)
    assert response.status_code == 500
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.name for r in errors] == ["coordinator.api.errors"], [r.getMessage() for r in errors]
    assert "SECRET" not in caplog.text
