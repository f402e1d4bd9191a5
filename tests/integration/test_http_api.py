"""The HTTP API of a running coordinator over real HTTP, Kafka and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from coordinator.app import Coordinator
from coordinator.config import Settings
from coordinator.core.state import SagaStatus
from coordinator.observability.tracing import is_valid_traceparent
from service_sdk import Topics
from tests.support.outbox import outbox_sent

TOKEN = "integration-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ORDER: dict[str, Any] = {
    "order_id": "o-1",
    "customer_id": "c-1",
    "items": [{"sku": "sku-1", "quantity": 2}],
    "amount_cents": 1250,
}


@pytest.fixture
async def served(
    coordinator_settings: Settings, running_coordinator: Any
) -> AsyncIterator[tuple[Coordinator, httpx.AsyncClient]]:
    """A running coordinator with an API token, and an HTTP client to its API."""
    coordinator_settings.http.token = SecretStr(TOKEN)
    async with running_coordinator(coordinator_settings) as coordinator:
        assert coordinator.http is not None
        await coordinator.http.wait_started()
        base_url = f"http://127.0.0.1:{coordinator.http.port}"
        async with httpx.AsyncClient(base_url=base_url, timeout=15.0) as client:
            yield coordinator, client


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

    shown = await api.get("/sagas/h-1")
    assert shown.status_code == 200
    body = shown.json()
    assert body["saga"]["status"] == "RUNNING"
    assert body["saga"]["current_step"] == "reserve_inventory"
    assert is_valid_traceparent(body["saga"]["traceparent"])
    assert [h["kind"] for h in body["history"]] == ["started", "command_sent"]

    listed = await api.get("/sagas", params={"status": "RUNNING", "saga_type": "order"})
    assert listed.status_code == 200
    assert sorted(s["saga_id"] for s in listed.json()["items"]) == ["h-1", "h-2"]
    page = (await api.get("/sagas", params={"limit": 1})).json()
    assert (len(page["items"]), page["next_offset"]) == (1, 1)
    second = (await api.get("/sagas", params={"limit": 1, "offset": 1})).json()
    assert {page["items"][0]["saga_id"], second["items"][0]["saga_id"]} == {"h-1", "h-2"}
    assert (await api.get("/sagas", params={"status": "COMPLETED"})).json()["items"] == []
    assert (await api.get("/sagas", params={"saga_type": "other"})).json()["items"] == []


async def test_bad_requests_get_clear_4xx_answers(
    served: tuple[Coordinator, httpx.AsyncClient],
) -> None:
    coordinator, api = served
    missing = await api.get("/sagas/no-such-saga")
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
        bad_query = await api.get("/sagas", params=params)
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


async def test_mutations_need_the_token(served: tuple[Coordinator, httpx.AsyncClient]) -> None:
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
    assert (await api.get("/sagas")).status_code == 200, "reads need no token"
    async with coordinator.store.engine.connect() as conn:
        assert await coordinator.store.select_sagas(conn) == []


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

    history = (await api.get("/sagas/h-3")).json()["history"]
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
