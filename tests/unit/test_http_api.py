"""The HTTP API's validation, authentication and error mapping, over an in-memory backend.

The backend runs the pure engine on sagas kept in a dict: no database, no Kafka, no sockets
(httpx talks to the ASGI app directly).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from coordinator.api.app import create_api, openapi_document
from coordinator.api.backend import Readiness
from coordinator.config import HttpSettings
from coordinator.core.errors import SagaNotFoundError, UnknownSagaTypeError
from coordinator.core.machine import apply, start_saga
from coordinator.core.state import (
    OperatorAbort,
    OperatorRetry,
    ReplyReceived,
    SagaInstance,
    SagaStatus,
    StartSaga,
)
from coordinator.observability.tracing import ensure_traceparent, trace_id_of
from coordinator.ops.actions import ActionResult, SagaTimeline, SentCommand
from coordinator.ops.signals import SentSignal
from coordinator.store.records import HistoryRecord
from saga_defs import OrderSaga, default_registry
from service_sdk.contract import Outcome

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
ORDER = {
    "order_id": "o-1",
    "customer_id": "c-1",
    "items": [{"sku": "sku-1", "quantity": 2}],
    "amount_cents": 1250,
}
OPENAPI_FILE = Path(__file__).parents[2] / "docs" / "openapi.json"


class FakeBackend:
    """Sagas in a dict, decided by the real (pure) engine."""

    def __init__(self) -> None:
        self.registry = default_registry()
        self.sagas: dict[str, SagaInstance] = {}
        self.history: dict[str, list[HistoryRecord]] = {}
        self.ready = Readiness(checks={"database": True, "consumer": True}, partitions=4)
        self.calls: list[tuple[str, Any]] = []

    def saga_types(self) -> Collection[str]:
        return self.registry.names()

    async def start_saga(
        self,
        saga_type: str,
        data: Mapping[str, Any],
        *,
        saga_id: str | None,
        traceparent: str | None,
    ) -> str:
        if saga_type not in self.registry:
            raise UnknownSagaTypeError(saga_type)
        saga_id = saga_id or f"generated-{len(self.sagas)}"
        self.calls.append(("start", (saga_type, saga_id, traceparent)))
        transition = start_saga(
            self.registry.get(saga_type),
            saga_id,
            StartSaga("m-1", dict(data), ensure_traceparent(traceparent)),
            NOW,
        )
        if saga_id not in self.sagas:
            self.sagas[saga_id] = transition.instance
            self.history[saga_id] = [
                HistoryRecord(i, saga_id, NOW, e.kind.value, e.step, e.message_id, e.detail)
                for i, e in enumerate(transition.history, start=1)
            ]
        return saga_id

    async def show(self, saga_id: str) -> SagaTimeline:
        if saga_id not in self.sagas:
            raise SagaNotFoundError(f"no saga with id {saga_id!r}", saga_id=saga_id)
        children = tuple(s for s in self.sagas.values() if s.parent_saga_id == saga_id)
        return SagaTimeline(self.sagas[saga_id], tuple(self.history[saga_id]), children)

    async def list_sagas(
        self,
        *,
        status: SagaStatus | None,
        saga_type: str | None,
        limit: int,
        offset: int,
        business_key: str | None = None,
    ) -> Sequence[SagaInstance]:
        self.calls.append(("list", (status, saga_type, limit, offset)))
        found = [
            s
            for s in self.sagas.values()
            if (status is None or s.status is status)
            and (saga_type is None or s.saga_type == saga_type)
            and (business_key is None or business_key in s.business_keys)
        ]
        return found[offset : offset + limit]

    async def _act(
        self, action: str, saga_id: str, actor: str, reason: str, dry_run: bool
    ) -> ActionResult:
        before = (await self.show(saga_id)).instance
        event = OperatorRetry(actor, reason) if action == "retry" else OperatorAbort(actor, reason)
        transition = apply(self.registry.get(before.saga_type), before, event, NOW)
        if not dry_run:
            self.sagas[saga_id] = transition.instance
        return ActionResult(
            saga_id=saga_id,
            action=action,
            actor=actor,
            reason=reason,
            dry_run=dry_run,
            changed=transition.changed,
            status_before=before.status,
            status_after=transition.instance.status,
            epoch=transition.instance.epoch,
            commands=tuple(
                SentCommand(
                    f"{c.service}.commands",
                    saga_id,
                    c.message_type,
                    c.step,
                    c.command_id,
                    c.attempt,
                )
                for c in transition.commands
            ),
            events=tuple(e.kind.value for e in transition.events),
            outbox_ids=() if dry_run else (1,),
        )

    async def retry(self, saga_id: str, *, actor: str, reason: str, dry_run: bool) -> ActionResult:
        return await self._act("retry", saga_id, actor, reason, dry_run)

    async def abort(self, saga_id: str, *, actor: str, reason: str, dry_run: bool) -> ActionResult:
        return await self._act("abort", saga_id, actor, reason, dry_run)

    async def send_signal(
        self,
        saga_id: str,
        name: str,
        payload: Mapping[str, Any],
        *,
        message_id: str | None,
        traceparent: str | None,
    ) -> SentSignal:
        saga = (await self.show(saga_id)).instance
        self.calls.append(("signal", (saga_id, name, dict(payload), message_id)))
        signal_id = message_id or f"signal-{len(self.calls)}"
        return SentSignal(signal_id, saga_id, name, "saga.signals", saga.status)

    async def readiness(self) -> Readiness:
        return self.ready


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


def _client(backend: FakeBackend, token: str | None = TOKEN) -> httpx.AsyncClient:
    settings = HttpSettings(token=SecretStr(token) if token is not None else None)
    app = create_api(backend, settings)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api")


@pytest.fixture
async def api(backend: FakeBackend) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(backend) as client:
        yield client


# -- start -----------------------------------------------------------------------------------


async def test_start_answers_202_with_the_saga_id_and_its_location(
    api: httpx.AsyncClient, backend: FakeBackend
) -> None:
    response = await api.post("/sagas/order", params={"saga_id": "o-1"}, json=ORDER, headers=AUTH)
    assert response.status_code == 202, response.text
    assert response.json() == {"saga_id": "o-1", "saga_type": "order", "location": "/sagas/o-1"}
    assert response.headers["location"] == "/sagas/o-1"
    assert backend.sagas["o-1"].status is SagaStatus.RUNNING


async def test_start_takes_the_idempotency_key_as_saga_id_and_is_idempotent(
    api: httpx.AsyncClient, backend: FakeBackend
) -> None:
    headers = {**AUTH, "Idempotency-Key": "key-1"}
    first = await api.post("/sagas/order", json=ORDER, headers=headers)
    again = await api.post("/sagas/order", json=ORDER, headers=headers)
    assert (first.status_code, again.status_code) == (202, 202)
    assert first.json()["saga_id"] == again.json()["saga_id"] == "key-1"
    assert list(backend.sagas) == ["key-1"]


async def test_start_refuses_a_saga_id_that_differs_from_the_idempotency_key(
    api: httpx.AsyncClient,
) -> None:
    response = await api.post(
        "/sagas/order",
        params={"saga_id": "a"},
        json=ORDER,
        headers={**AUTH, "Idempotency-Key": "b"},
    )
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_request"


async def test_start_passes_the_traceparent_header_on(
    api: httpx.AsyncClient, backend: FakeBackend
) -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    response = await api.post(
        "/sagas/order", json=ORDER, headers={**AUTH, "traceparent": traceparent}
    )
    assert response.status_code == 202
    saga = backend.sagas[response.json()["saga_id"]]
    assert trace_id_of(saga.traceparent) == "0af7651916cd43dd8448eb211c80319c"


async def test_start_of_an_unknown_saga_type_is_404(api: httpx.AsyncClient) -> None:
    response = await api.post("/sagas/no-such-type", json=ORDER, headers=AUTH)
    assert response.status_code == 404
    assert response.json()["error"] == "unknown_saga_type"
    assert "no-such-type" in response.json()["message"]


async def test_start_with_invalid_data_is_422_with_pydantic_messages(
    api: httpx.AsyncClient,
) -> None:
    bad = {**ORDER, "amount_cents": -5}
    del bad["customer_id"]
    response = await api.post("/sagas/order", json=bad, headers=AUTH)
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "invalid_saga_data"
    problems = {tuple(e["loc"]): e["msg"] for e in body["errors"]}
    assert problems[("body", "customer_id")] == "Field required"
    assert "greater than 0" in problems[("body", "amount_cents")]
    assert all("input" not in e for e in body["errors"])


@pytest.mark.parametrize(
    ("content", "content_type"),
    [("[1, 2]", "application/json"), ("{not json", "application/json"), ("", "application/json")],
)
async def test_start_with_a_body_that_is_not_an_object_is_422(
    api: httpx.AsyncClient, content: str, content_type: str
) -> None:
    response = await api.post(
        "/sagas/order", content=content, headers={**AUTH, "Content-Type": content_type}
    )
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "invalid_request"
    assert body["message"].startswith("body")


async def test_start_with_an_overlong_saga_id_is_422(api: httpx.AsyncClient) -> None:
    response = await api.post(
        "/sagas/order", params={"saga_id": "x" * 201}, json=ORDER, headers=AUTH
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["query", "saga_id"]


# -- authentication ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/sagas/order", "/sagas/o-1/retry", "/sagas/o-1/abort"],
    ids=["start", "retry", "abort"],
)
async def test_mutations_without_a_token_are_401(api: httpx.AsyncClient, path: str) -> None:
    response = await api.post(path, json={"reason": "r", **ORDER})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["error"] == "unauthorized"


@pytest.mark.parametrize(
    "authorization", [f"Bearer {TOKEN}x", "Bearer wrong", f"Basic {TOKEN}", "Bearer", TOKEN]
)
async def test_mutations_with_a_wrong_token_are_401(
    api: httpx.AsyncClient, backend: FakeBackend, authorization: str
) -> None:
    response = await api.post("/sagas/order", json=ORDER, headers={"Authorization": authorization})
    assert response.status_code == 401
    assert response.json()["error"] in {"unauthorized", "invalid_token"}
    assert backend.sagas == {}


async def test_the_token_is_checked_before_the_body(api: httpx.AsyncClient) -> None:
    response = await api.post(
        "/sagas/order", content="{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 401


async def test_without_a_configured_token_mutations_are_refused(backend: FakeBackend) -> None:
    async with _client(backend, token=None) as api:
        response = await api.post("/sagas/order", json=ORDER, headers=AUTH)
        assert response.status_code == 403
        assert response.json()["error"] == "mutations_disabled"
        assert (await api.get("/sagas")).status_code == 200
    async with _client(backend, token="") as api:
        assert (await api.post("/sagas/order", json=ORDER, headers=AUTH)).status_code == 403
    assert backend.sagas == {}


async def test_the_bearer_scheme_is_case_insensitive(api: httpx.AsyncClient) -> None:
    response = await api.post(
        "/sagas/order", json=ORDER, headers={"Authorization": f"bearer {TOKEN}"}
    )
    assert response.status_code == 202


# -- reads -----------------------------------------------------------------------------------


async def test_get_returns_the_saga_and_its_history(api: httpx.AsyncClient) -> None:
    await api.post("/sagas/order", params={"saga_id": "o-1"}, json=ORDER, headers=AUTH)
    response = await api.get("/sagas/o-1", headers=AUTH)
    assert response.status_code == 200
    body = response.json()
    assert body["saga"]["saga_id"] == "o-1"
    assert body["saga"]["status"] == "RUNNING"
    assert body["saga"]["current_step"] == "reserve_inventory"
    assert body["saga"]["data"]["order_id"] == "o-1"
    assert [h["kind"] for h in body["history"]] == ["started", "command_sent"]


async def test_get_of_an_unknown_saga_is_404(api: httpx.AsyncClient) -> None:
    response = await api.get("/sagas/nope", headers=AUTH)
    assert response.status_code == 404
    assert response.json()["error"] == "saga_not_found"


async def test_list_passes_filters_and_pages(api: httpx.AsyncClient, backend: FakeBackend) -> None:
    for n in range(3):
        await api.post("/sagas/order", params={"saga_id": f"o-{n}"}, json=ORDER, headers=AUTH)
    response = await api.get(
        "/sagas",
        params={"status": "RUNNING", "saga_type": "order", "limit": 2, "offset": 0},
        headers=AUTH,
    )
    assert response.status_code == 200
    body = response.json()
    assert [s["saga_id"] for s in body["items"]] == ["o-0", "o-1"]
    assert (body["limit"], body["offset"], body["next_offset"]) == (2, 0, 2)
    assert backend.calls[-1] == ("list", (SagaStatus.RUNNING, "order", 2, 0))
    last = (await api.get("/sagas", params={"limit": 2, "offset": 2}, headers=AUTH)).json()
    assert ([s["saga_id"] for s in last["items"]], last["next_offset"]) == (["o-2"], None)


async def test_list_finds_sagas_by_business_key(api: httpx.AsyncClient) -> None:
    for n in range(2):
        order = {**ORDER, "order_id": f"order-{n}"}
        await api.post("/sagas/order", params={"saga_id": f"o-{n}"}, json=order, headers=AUTH)
    found = await api.get("/sagas", params={"key": "order_id=order-1"}, headers=AUTH)
    assert [s["saga_id"] for s in found.json()["items"]] == ["o-1"]
    bad = await api.get("/sagas", params={"key": "order_id"}, headers=AUTH)
    assert bad.status_code == 422
    assert "name=value" in bad.json()["message"]


@pytest.mark.parametrize(
    ("params", "where"),
    [
        ({"status": "DONE"}, ["query", "status"]),
        ({"status": "running"}, ["query", "status"]),
        ({"limit": 0}, ["query", "limit"]),
        ({"limit": 1001}, ["query", "limit"]),
        ({"limit": "ten"}, ["query", "limit"]),
        ({"offset": -1}, ["query", "offset"]),
        ({"saga_type": ""}, ["query", "saga_type"]),
    ],
)
async def test_list_rejects_bad_query_parameters(
    api: httpx.AsyncClient, params: dict[str, Any], where: list[str]
) -> None:
    response = await api.get("/sagas", params=params, headers=AUTH)
    assert response.status_code == 422
    body = response.json()
    assert body["errors"][0]["loc"] == where
    assert body["message"].startswith(".".join(where))


async def test_the_status_error_names_the_allowed_values(api: httpx.AsyncClient) -> None:
    message = (await api.get("/sagas", params={"status": "DONE"}, headers=AUTH)).json()["message"]
    assert all(s.value in message for s in SagaStatus)


# -- operator actions ------------------------------------------------------------------------


async def test_retry_and_abort_with_dry_run_actor_and_reason(
    api: httpx.AsyncClient, backend: FakeBackend
) -> None:
    await api.post("/sagas/order", params={"saga_id": "o-1"}, json=ORDER, headers=AUTH)
    retried = await api.post("/sagas/o-1/retry", json={"reason": "stuck"}, headers=AUTH)
    assert retried.status_code == 200, retried.text
    body = retried.json()
    assert (body["actor"], body["status_after"]) == ("http-api", "RUNNING")
    assert [(c["step"], c["attempt"]) for c in body["commands"]] == [("reserve_inventory", 2)]
    dry = await api.post(
        "/sagas/o-1/abort", params={"dry_run": "true"}, json={"reason": "test"}, headers=AUTH
    )
    assert dry.status_code == 200, dry.text
    # The reservation in flight is released (or fenced) before the saga can end.
    assert (dry.json()["dry_run"], dry.json()["status_after"]) == (True, "COMPENSATING")
    assert backend.sagas["o-1"].status is SagaStatus.RUNNING
    done = await api.post(
        "/sagas/o-1/abort", json={"reason": " customer asked ", "actor": "alice"}, headers=AUTH
    )
    assert done.status_code == 200
    body = done.json()
    assert (body["actor"], body["reason"], body["dry_run"]) == ("alice", "customer asked", False)
    assert body["status_before"] == "RUNNING"
    aborted = backend.sagas["o-1"]
    assert aborted.status is SagaStatus.COMPENSATING
    # The inventory answers that it never reserved (a fence): the saga is compensated.
    fenced = ReplyReceived(
        "m-fenced", aborted.current_step, aborted.command_id, 1, Outcome.SUCCESS, {"fenced": True}
    )
    backend.sagas["o-1"] = apply(OrderSaga, aborted, fenced, NOW).instance
    assert backend.sagas["o-1"].status is SagaStatus.COMPENSATED
    # Nothing left to retry or abort: 409, and the message says why.
    for action in ("retry", "abort"):
        refused = await api.post(f"/sagas/o-1/{action}", json={"reason": "r"}, headers=AUTH)
        assert refused.status_code == 409
        assert refused.json()["error"] == "invalid_action"


async def test_an_action_on_an_unknown_saga_is_404(api: httpx.AsyncClient) -> None:
    response = await api.post("/sagas/nope/retry", json={"reason": "r"}, headers=AUTH)
    assert response.status_code == 404


@pytest.mark.parametrize(
    "body",
    [{}, {"reason": ""}, {"reason": "   "}, {"reason": "r", "actor": ""}, {"reason": "r", "x": 1}],
)
async def test_an_action_needs_a_reason_and_nothing_else(
    api: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    response = await api.post("/sagas/o-1/retry", json=body, headers=AUTH)
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"][0] == "body"


async def test_a_bad_dry_run_value_is_422(api: httpx.AsyncClient) -> None:
    response = await api.post(
        "/sagas/o-1/retry", params={"dry_run": "maybe"}, json={"reason": "r"}, headers=AUTH
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["query", "dry_run"]


async def test_the_saga_document_links_parent_and_children(
    api: httpx.AsyncClient, backend: FakeBackend
) -> None:
    await api.post("/sagas/order", params={"saga_id": "p-1"}, json=ORDER, headers=AUTH)
    await api.post("/sagas/order", params={"saga_id": "c-1"}, json=ORDER, headers=AUTH)
    backend.sagas["c-1"] = replace(backend.sagas["c-1"], parent_saga_id="p-1", parent_step="kid")
    parent = (await api.get("/sagas/p-1", headers=AUTH)).json()
    assert [(c["saga_id"], c["parent_step"], c["status"]) for c in parent["children"]] == [
        ("c-1", "kid", "RUNNING")
    ]
    assert parent["saga"]["parent_saga_id"] is None
    child = (await api.get("/sagas/c-1", headers=AUTH)).json()
    assert (child["saga"]["parent_saga_id"], child["saga"]["parent_step"]) == ("p-1", "kid")
    assert child["children"] == []


# -- signals ---------------------------------------------------------------------------------


async def test_a_signal_answers_202_with_its_id(
    api: httpx.AsyncClient, backend: FakeBackend
) -> None:
    await api.post("/sagas/order", params={"saga_id": "o-1"}, json=ORDER, headers=AUTH)
    response = await api.post(
        "/sagas/o-1/signals/approval",
        json={"approved_by": "ann"},
        headers={**AUTH, "Idempotency-Key": "sig-1"},
    )
    assert response.status_code == 202, response.text
    assert response.json() == {
        "signal_id": "sig-1",
        "saga_id": "o-1",
        "name": "approval",
        "topic": "saga.signals",
        "saga_status": "RUNNING",
    }
    assert backend.calls[-1] == ("signal", ("o-1", "approval", {"approved_by": "ann"}, "sig-1"))


async def test_a_signal_without_a_body_has_an_empty_payload(
    api: httpx.AsyncClient, backend: FakeBackend
) -> None:
    await api.post("/sagas/order", params={"saga_id": "o-1"}, json=ORDER, headers=AUTH)
    response = await api.post("/sagas/o-1/signals/approval", headers=AUTH)
    assert response.status_code == 202, response.text
    assert backend.calls[-1][1][2] == {}


async def test_a_signal_for_an_unknown_saga_is_404(api: httpx.AsyncClient) -> None:
    response = await api.post("/sagas/nobody/signals/approval", json={}, headers=AUTH)
    assert response.status_code == 404
    assert response.json()["error"] == "saga_not_found"


@pytest.mark.parametrize(
    ("path", "content"),
    [
        ("/sagas/o-1/signals/approval", "[1]"),
        ("/sagas/o-1/signals/approval", "{not json"),
        ("/sagas/o-1/signals/-dash-first", "{}"),
        ("/sagas/o-1/signals/with%20space", "{}"),
    ],
)
async def test_a_signal_with_a_bad_body_or_name_is_422(
    api: httpx.AsyncClient, backend: FakeBackend, path: str, content: str
) -> None:
    await api.post("/sagas/order", params={"saga_id": "o-1"}, json=ORDER, headers=AUTH)
    response = await api.post(
        path, content=content, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert not [c for c in backend.calls if c[0] == "signal"]


async def test_a_signal_needs_the_token(backend: FakeBackend) -> None:
    async with _client(backend) as client:
        response = await client.post("/sagas/o-1/signals/approval", json={})
    assert response.status_code == 401


# -- probes, unknown routes, schema ----------------------------------------------------------


async def test_health_and_ready(api: httpx.AsyncClient, backend: FakeBackend) -> None:
    assert (await api.get("/health")).json() == {"status": "ok"}
    ready = await api.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["ready"] is True
    backend.ready = Readiness(
        checks={"database": False, "consumer": True}, details={"database": "refused"}
    )
    not_ready = await api.get("/ready")
    assert not_ready.status_code == 503
    assert not_ready.json()["checks"] == {"database": False, "consumer": True}
    assert not_ready.json()["details"] == {"database": "refused"}


async def test_unknown_routes_and_methods_answer_json(api: httpx.AsyncClient) -> None:
    missing = await api.get("/nowhere")
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found"
    wrong = await api.delete("/sagas/o-1")
    assert wrong.status_code == 405
    assert wrong.json()["error"] == "method_not_allowed"


async def test_the_served_schema_is_the_committed_one(api: httpx.AsyncClient) -> None:
    served = (await api.get("/openapi.json")).json()
    committed = json.loads(OPENAPI_FILE.read_text())
    assert served == committed == openapi_document(), (
        "docs/openapi.json is stale: python -m coordinator.api.app > docs/openapi.json"
    )


def test_the_schema_documents_auth_on_every_saga_endpoint() -> None:
    schema = openapi_document()
    secured = {
        (path, method)
        for path, methods in schema["paths"].items()
        for method, operation in methods.items()
        if operation.get("security")
    }
    assert secured == {
        ("/sagas", "get"),
        ("/sagas/{saga_id}", "get"),
        ("/sagas/{saga_type}", "post"),
        ("/sagas/{saga_id}/retry", "post"),
        ("/sagas/{saga_id}/abort", "post"),
        ("/schedules", "get"),
        ("/schedules/{name}", "get"),
        ("/schedules/{name}/pause", "post"),
        ("/schedules/{name}/resume", "post"),
        ("/sagas/{saga_id}/signals/{name}", "post"),
    }
