"""The HTTP API against hostile input: body and message caps, control characters, numeric
bounds, logging of failures, the read token, bind addresses, idempotency conflicts, connection
limits and response headers. No sockets: httpx talks to the ASGI app directly."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Collection, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from pydantic import SecretStr

from coordinator.api.app import create_api, openapi_document
from coordinator.api.idempotency import starts_alike
from coordinator.api.server import HttpServer
from coordinator.api.validation import SAGA_ID_PATTERN
from coordinator.config import HttpSettings, MetricsSettings, Settings
from coordinator.store.database import create_engine
from tests.unit.test_http_api import AUTH, ORDER, TOKEN, FakeBackend

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
MIB = 1_048_576


def _client(
    backend: FakeBackend, settings: HttpSettings | None = None, **api: Any
) -> httpx.AsyncClient:
    settings = settings if settings is not None else HttpSettings(token=SecretStr(TOKEN))
    app = create_api(backend, settings, **api)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api")


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
async def api(backend: FakeBackend) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(backend) as client:
        yield client


def _big_order(items: int) -> dict[str, Any]:
    # A valid order: 20,000 lines of ~90 bytes each make ~1.8 MB of JSON.
    lines = [{"sku": f"sku-{n:059d}", "quantity": 10_000} for n in range(items)]
    return {**ORDER, "items": lines}


# -- 1. request bodies and Kafka messages are capped -------------------------------------------


async def test_a_body_over_the_cap_is_refused_by_its_content_length_before_parsing(
    api: httpx.AsyncClient, backend: FakeBackend
) -> None:
    # Not even JSON: a parser would answer 422; the cap answers first.
    response = await api.post(
        "/sagas/order",
        content=b"x" * (MIB + 1),
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    body = response.json()
    assert body["error"] == "payload_too_large"
    assert str(MIB) in body["message"]
    assert backend.sagas == {}


async def test_a_streamed_body_is_cut_off_once_past_the_cap(backend: FakeBackend) -> None:
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(64):
            sent += 1
            yield b" " * 1024

    settings = HttpSettings(token=SecretStr(TOKEN), max_body_bytes=8 * 1024)
    async with _client(backend, settings) as api:
        response = await api.post(
            "/sagas/order", content=chunks(), headers={**AUTH, "Content-Type": "application/json"}
        )
    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"
    assert sent < 64, "the whole body was read"
    assert backend.sagas == {}


async def test_the_body_cap_is_a_setting(backend: FakeBackend) -> None:
    settings = HttpSettings(token=SecretStr(TOKEN), max_body_bytes=2_048)
    async with _client(backend, settings) as api:
        small = await api.post("/sagas/order", json=ORDER, headers=AUTH)
        assert small.status_code == 202, small.text
        large = await api.post("/sagas/order", json=_big_order(30), headers=AUTH)
        assert large.status_code == 413


async def test_a_stalled_body_is_408(backend: FakeBackend) -> None:
    stall = asyncio.Event()

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"order_id": '
        await stall.wait()  # never set: the client stops sending mid-body

    settings = HttpSettings(token=SecretStr(TOKEN), body_timeout_s=0.05)
    async with _client(backend, settings) as api:
        response = await api.post(
            "/sagas/order", content=chunks(), headers={**AUTH, "Content-Type": "application/json"}
        )
    assert response.status_code == 408
    assert response.json()["error"] == "request_timeout"


async def test_a_start_whose_kafka_message_is_too_large_is_refused_before_anything_is_stored(
    backend: FakeBackend,
) -> None:
    order = _big_order(20_000)
    settings = HttpSettings(token=SecretStr(TOKEN), max_body_bytes=4 * MIB)
    async with _client(backend, settings) as api:
        response = await api.post(
            "/sagas/order", params={"saga_id": "big"}, json=order, headers=AUTH
        )
    assert len(response.request.content) > 1_800_000  # the body passed the (raised) body cap
    assert response.status_code == 413, response.text
    body = response.json()
    assert body["error"] == "message_too_large"
    assert "1000000" in body["message"]
    assert "SAGA_KAFKA__MAX_MESSAGE_BYTES" in body["message"]
    assert backend.sagas == {}
    assert [c for c in backend.calls if c[0] == "start"] == []


async def test_the_message_limit_is_the_kafka_setting(backend: FakeBackend) -> None:
    async with _client(backend, max_message_bytes=4_000) as api:
        fits = await api.post("/sagas/order", json=_big_order(10), headers=AUTH)
        assert fits.status_code == 202, fits.text
        too_big = await api.post("/sagas/order", json=_big_order(40), headers=AUTH)
        assert too_big.status_code == 413
        assert "4000" in too_big.json()["message"]


# -- 2. control characters and the saga id alphabet --------------------------------------------


@pytest.mark.parametrize(
    "saga_id",
    ["a\x00b", "a\nb", "a\rb", "a/b", "a b", "\u202eab", "é", "a\x7f", "x" * 201, ""],
    ids=["nul", "lf", "cr", "slash", "space", "bidi", "non-ascii", "del", "long", "empty"],
)
async def test_a_new_saga_id_outside_the_alphabet_is_422(
    api: httpx.AsyncClient, backend: FakeBackend, saga_id: str
) -> None:
    response = await api.post("/sagas/order", params={"saga_id": saga_id}, json=ORDER, headers=AUTH)
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["loc"] == ["query", "saga_id"]
    assert backend.sagas == {}


@pytest.mark.parametrize("key", ["a b", "a/b", "é", "\u202eab", "x" * 201])
async def test_an_idempotency_key_outside_the_alphabet_is_422(
    api: httpx.AsyncClient, backend: FakeBackend, key: str
) -> None:
    response = await api.post(
        "/sagas/order", json=ORDER, headers={**AUTH, "Idempotency-Key": key.encode()}
    )
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["loc"] == ["header", "Idempotency-Key"]
    assert backend.sagas == {}


async def test_ids_in_the_alphabet_are_accepted(api: httpx.AsyncClient) -> None:
    saga_id = "Order-1.2_x:y@z"
    response = await api.post("/sagas/order", params={"saga_id": saga_id}, json=ORDER, headers=AUTH)
    assert response.status_code == 202, response.text
    assert (await api.get(f"/sagas/{saga_id}", headers=AUTH)).status_code == 200


@pytest.mark.parametrize(
    "path",
    ["/sagas/a%00b", "/sagas/a%0Ab", "/sagas/a%1Bb", "/sagas/a%E2%80%AEb", "/sagas/a%C2%85b"],
    ids=["nul", "lf", "esc", "bidi", "c1"],
)
async def test_control_characters_in_a_saga_id_path_are_422(
    api: httpx.AsyncClient, path: str
) -> None:
    for method, suffix, body in (("GET", "", None), ("POST", "/retry", {"reason": "r"})):
        response = await api.request(method, path + suffix, json=body, headers=AUTH)
        assert response.status_code == 422, (method, response.text)
        assert response.json()["errors"][0]["loc"] == ["path", "saga_id"]


async def test_ids_of_sagas_started_elsewhere_stay_addressable(api: httpx.AsyncClient) -> None:
    # Kafka start requests may use ids outside the new-id alphabet: looking them up works.
    response = await api.get("/sagas/order%2042", headers=AUTH)
    assert (response.status_code, response.json()["error"]) == (404, "saga_not_found")


@pytest.mark.parametrize(
    ("params", "where"),
    [
        ({"saga_type": "or\x00der"}, ["query", "saga_type"]),
        ({"saga_type": "or\nder"}, ["query", "saga_type"]),
        ({"saga_type": "\u2066order"}, ["query", "saga_type"]),
    ],
)
async def test_control_characters_in_filters_are_422(
    api: httpx.AsyncClient, params: dict[str, Any], where: list[str]
) -> None:
    response = await api.get("/sagas", params=params, headers=AUTH)
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == where


async def test_control_characters_in_the_saga_type_path_are_422(api: httpx.AsyncClient) -> None:
    response = await api.post("/sagas/or%00der", json=ORDER, headers=AUTH)
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["path", "saga_type"]


@pytest.mark.parametrize(
    "content",
    [
        '{"order_id": "o-\\u0000", "customer_id": "c", "items": [{"sku": "s", "quantity": 1}], '
        '"amount_cents": 1}',
        '{"order_id": "o-1", "customer_id": "c\\u001b[2J", "items": [{"sku": "s", "quantity": 1}],'
        ' "amount_cents": 1}',
        '{"order_id": "o-1", "customer_id": "c", "items": [{"sku": "s\\u0085", "quantity": 1}], '
        '"amount_cents": 1}',
        '{"order_id": "o-\\ud800", "customer_id": "c", "items": [{"sku": "s", "quantity": 1}], '
        '"amount_cents": 1}',
        '{"order_id": "o-1", "customer_id": "c", "items": [{"sku": "s", "quantity": 1}], '
        '"amount_cents": 1, "note\\u0000": 1}',
        '{"order_id": "o-1", "amount_cents": NaN}',
        '{"order_id": "o-1", "amount_cents": Infinity}',
        '{"order_id": "o-1", "x": ' + "[" * 40 + "]" * 40 + "}",
    ],
    ids=["nul", "escape", "c1", "surrogate", "nul-in-key", "nan", "infinity", "deep"],
)
async def test_saga_data_with_control_characters_or_non_finite_numbers_is_422(
    api: httpx.AsyncClient, backend: FakeBackend, content: str
) -> None:
    response = await api.post(
        "/sagas/order", content=content, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text
    body = response.json()
    # Refused by the API itself, before the definition's model (or the database) sees it.
    assert body["error"] == "invalid_request", body
    assert body["errors"][0]["loc"][0] == "body"
    assert backend.sagas == {}


async def test_saga_data_may_hold_tabs_and_newlines(api: httpx.AsyncClient) -> None:
    response = await api.post(
        "/sagas/order", json={**ORDER, "customer_id": "Ada\tLovelace\r\nLondon"}, headers=AUTH
    )
    assert response.status_code == 202, response.text


@pytest.mark.parametrize(
    "body",
    [
        {"reason": "stuck\x00"},
        {"reason": "a\nforged log line"},
        {"reason": "r", "actor": "\u202eeve"},
    ],
    ids=["nul", "newline", "bidi"],
)
async def test_control_characters_in_an_action_are_422(
    api: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    await api.post("/sagas/order", params={"saga_id": "o-1"}, json=ORDER, headers=AUTH)
    response = await api.post("/sagas/o-1/abort", json=body, headers=AUTH)
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["loc"][0] == "body"


def test_the_schema_documents_the_saga_id_alphabet() -> None:
    schema = openapi_document()
    assert SAGA_ID_PATTERN in schema["info"]["description"]
    start = schema["paths"]["/sagas/{saga_type}"]["post"]
    patterns = {
        p["name"]: {s.get("pattern") for s in p["schema"].get("anyOf", [p["schema"]])}
        for p in start["parameters"]
    }
    assert SAGA_ID_PATTERN in patterns["saga_id"]
    assert SAGA_ID_PATTERN in patterns["Idempotency-Key"]


# -- 3. numeric bounds ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"offset": 2**63},
        {"offset": 2**64 + 1},
        {"offset": 10**30},
        {"offset": 1_000_001},
        {"limit": 2**63},
        {"limit": 10**30},
    ],
)
async def test_numbers_beyond_their_bounds_are_422(
    api: httpx.AsyncClient, backend: FakeBackend, params: dict[str, int]
) -> None:
    response = await api.get("/sagas", params=params, headers=AUTH)
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["loc"] == ["query", next(iter(params))]
    assert [c for c in backend.calls if c[0] == "list"] == []


async def test_the_deepest_offset_is_accepted(api: httpx.AsyncClient) -> None:
    response = await api.get("/sagas", params={"offset": 1_000_000}, headers=AUTH)
    assert response.status_code == 200


def test_every_numeric_parameter_has_an_upper_bound() -> None:
    for path, methods in openapi_document()["paths"].items():
        for method, operation in methods.items():
            for parameter in operation.get("parameters", []):
                if parameter["schema"].get("type") == "integer":
                    assert "maximum" in parameter["schema"], (method, path, parameter["name"])


# -- 4. failures are logged once, without the request's data -----------------------------------


class FailingBackend(FakeBackend):
    """Fails every start the way a database driver does: the saga data in the message."""

    def __init__(self, failure: type[Exception] = RuntimeError) -> None:
        super().__init__()
        self.failure = failure

    async def start_saga(
        self,
        saga_type: str,
        data: Mapping[str, Any],
        *,
        saga_id: str | None,
        traceparent: str | None,
    ) -> str:
        try:
            raise ValueError(f"invalid input for query argument $3: {dict(data)!r}")
        except ValueError as exc:
            raise self.failure(f"statement failed with parameters {dict(data)!r}") from exc


async def test_an_unexpected_failure_is_one_log_line_without_the_data(
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = {**ORDER, "customer_id": "SECRET-CUSTOMER-4711"}
    caplog.set_level(logging.DEBUG)
    # raise_app_exceptions (httpx's default): an exception leaving the app fails the test,
    # as it would make uvicorn log it a second time.
    async with _client(FailingBackend()) as api:
        response = await api.post("/sagas/order", json=secret, headers=AUTH)
    assert response.status_code == 500
    body = response.json()
    assert body["error"] == "internal_error"
    assert "SECRET" not in response.text
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    (record,) = errors
    line = record.getMessage()
    assert "SECRET" not in caplog.text
    assert record.exc_info is None, "a multi-kilobyte traceback with every message"
    assert "POST /sagas/{saga_type}" in line
    assert "builtins.RuntimeError <- builtins.ValueError" in line
    assert "start_saga" in line  # where it happened
    error_id = body["message"].split()[2].rstrip(";")
    assert error_id in line
    assert len(line) < 4_000


async def test_a_transient_failure_is_503_and_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with _client(FailingBackend(ConnectionRefusedError)) as api:
        response = await api.post("/sagas/order", json=ORDER, headers=AUTH)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"] == "unavailable"
    logged = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(logged) == 1
    assert "customer_id" not in caplog.text


def test_the_database_engine_keeps_statement_parameters_out_of_errors() -> None:
    engine = create_engine("postgresql://saga@127.0.0.1:1/saga")
    assert engine.sync_engine.hide_parameters is True


# -- 5. reads need the token when one is configured --------------------------------------------


async def test_reads_need_the_token_when_one_is_configured(
    api: httpx.AsyncClient, backend: FakeBackend
) -> None:
    await api.post("/sagas/order", params={"saga_id": "o-1"}, json=ORDER, headers=AUTH)
    for path in ("/sagas", "/sagas/o-1", "/sagas/nope?x=1", "/sagas?offset=99999999999999999999"):
        anonymous = await api.get(path)
        assert anonymous.status_code == 401, path
        assert anonymous.json()["error"] == "unauthorized"
        assert anonymous.headers["www-authenticate"].startswith("Bearer")
        assert "o-1" not in anonymous.text
        wrong = await api.get(path, headers={"Authorization": "Bearer nope"})
        assert (wrong.status_code, wrong.json()["error"]) == (401, "invalid_token")
    assert (await api.get("/sagas/o-1", headers=AUTH)).status_code == 200


async def test_probes_and_the_schema_stay_open(api: httpx.AsyncClient) -> None:
    for path in ("/health", "/ready", "/openapi.json", "/docs"):
        assert (await api.get(path)).status_code == 200, path


async def test_reads_can_be_opened_or_closed_explicitly(backend: FakeBackend) -> None:
    opened = HttpSettings(token=SecretStr(TOKEN), token_for_reads=False)
    async with _client(backend, opened) as api:
        assert (await api.get("/sagas")).status_code == 200
        assert (await api.post("/sagas/order", json=ORDER)).status_code == 401
    closed_without_token = HttpSettings(token_for_reads=True)
    async with _client(backend, closed_without_token) as api:
        refused = await api.get("/sagas", headers=AUTH)
        assert (refused.status_code, refused.json()["error"]) == (403, "reads_disabled")
    assert HttpSettings().reads_need_token is False
    assert HttpSettings(token=SecretStr(TOKEN)).reads_need_token is True
    assert HttpSettings(token=SecretStr("")).reads_need_token is False


def test_the_read_token_setting_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SAGA_HTTP__TOKEN", TOKEN)
    monkeypatch.setenv("SAGA_HTTP__TOKEN_FOR_READS", "false")
    assert Settings().http.reads_need_token is False


# -- 6. loopback by default; deploy/ binds everywhere only where it must -----------------------


def test_the_servers_bind_loopback_by_default() -> None:
    assert HttpSettings().host == "127.0.0.1"
    assert MetricsSettings().host == "127.0.0.1"


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return loaded


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    return {str(k): str(v) for k, v in env.items()}


def test_compose_binds_everywhere_and_never_publishes_the_api_without_a_token() -> None:
    services = _compose()["services"]
    scraped = {"coordinator-1", "coordinator-2", "inventory", "payment", "shipping"}
    for name in scraped:
        assert _environment(services[name]).get("SAGA_METRICS__HOST") == "0.0.0.0", name
    coordinators = {n for n, s in services.items() if s.get("command") == ["run"]}
    assert coordinators == {"coordinator-1", "coordinator-2"}
    for name in coordinators:
        service = services[name]
        env = _environment(service)
        assert env.get("SAGA_HTTP__HOST") == "0.0.0.0", name
        # From the shell, with no default to fall back on; unset, the API refuses every
        # /sagas endpoint (reads included), it never opens.
        assert env.get("SAGA_HTTP__TOKEN") == "${SAGA_HTTP_TOKEN}", name
        assert env.get("SAGA_HTTP__TOKEN_FOR_READS") == "true", name
        published = [str(p) for p in service.get("ports", [])]
        assert published, name
        assert all(p.startswith("127.0.0.1:") for p in published), (name, published)


def test_kubernetes_binds_everywhere() -> None:
    config = yaml.safe_load((DEPLOY / "k8s" / "configmap.yaml").read_text())
    assert config["data"]["SAGA_HTTP__HOST"] == "0.0.0.0"
    assert config["data"]["SAGA_METRICS__HOST"] == "0.0.0.0"


# -- 7. a repeated start with different data is a conflict -------------------------------------


async def test_reusing_an_idempotency_key_with_a_different_body_is_409(
    api: httpx.AsyncClient, backend: FakeBackend
) -> None:
    headers = {**AUTH, "Idempotency-Key": "key-1"}
    first = await api.post("/sagas/order", json=ORDER, headers=headers)
    assert first.status_code == 202
    other = await api.post("/sagas/order", json={**ORDER, "amount_cents": 99_999}, headers=headers)
    assert other.status_code == 409, other.text
    assert other.json()["error"] == "idempotency_conflict"
    assert "key-1" in other.json()["message"]
    assert backend.sagas["key-1"].data["amount_cents"] == ORDER["amount_cents"]
    again = await api.post("/sagas/order", json=ORDER, headers=headers)
    assert (again.status_code, again.json()["saga_id"]) == (202, "key-1")


async def test_reusing_a_saga_id_with_a_different_body_is_409(api: httpx.AsyncClient) -> None:
    await api.post("/sagas/order", params={"saga_id": "o-1"}, json=ORDER, headers=AUTH)
    items = {**ORDER, "items": [{"sku": "sku-1", "quantity": 3}]}
    response = await api.post("/sagas/order", params={"saga_id": "o-1"}, json=items, headers=AUTH)
    assert response.status_code == 409


async def test_a_repeat_that_the_model_reads_the_same_way_is_idempotent(
    api: httpx.AsyncClient,
) -> None:
    headers = {**AUTH, "Idempotency-Key": "key-2"}
    assert (await api.post("/sagas/order", json=ORDER, headers=headers)).status_code == 202
    # The currency the model defaulted, a number sent as a string: the same order.
    spelled_out = {**ORDER, "currency": "EUR", "amount_cents": str(ORDER["amount_cents"])}
    assert (await api.post("/sagas/order", json=spelled_out, headers=headers)).status_code == 202
    other_currency = {**ORDER, "currency": "USD"}
    assert (await api.post("/sagas/order", json=other_currency, headers=headers)).status_code == 409


@pytest.mark.parametrize(
    ("recorded", "given", "alike"),
    [
        ({"a": 1, "b": "x"}, {"a": 1}, True),
        ({"a": 1}, {"a": 2}, False),
        ({"a": 1}, {"c": 1}, False),
        ({"a": [1, 2]}, {"a": [1, 2, 3]}, False),
        ({"a": True}, {"a": 1}, True),
        ({"a": 1}, {"a": True}, False),
        ({"a": True}, {"a": "yes"}, True),
        ({"a": False}, {"a": "true"}, False),
        ({"a": 5}, {"a": "5"}, True),
        ({"a": 5}, {"a": "6"}, False),
        ({"a": "2025-01-02T03:04:05Z"}, {"a": "2025-01-02T04:04:05+01:00"}, True),
        ({"a": "2025-01-02T03:04:05Z"}, {"a": "2025-01-02T03:04:06Z"}, False),
        ({"a": "x"}, {"a": " x "}, True),
        ({"a": {"b": None}}, {"a": {"b": 0}}, False),
    ],
)
def test_what_counts_as_the_same_start(
    recorded: dict[str, Any], given: dict[str, Any], alike: bool
) -> None:
    assert starts_alike(recorded, given) is alike


# -- 8. connection limits --------------------------------------------------------------------------


def test_the_server_bounds_headers_connections_and_keep_alive() -> None:
    settings = HttpSettings(
        port=0,
        max_header_bytes=4_096,
        keep_alive_timeout_s=3,
        max_concurrency=17,
        header_timeout_s=2.5,
    )
    server = HttpServer(object(), settings)
    config = server._config
    assert config.h11_max_incomplete_event_size == 4_096
    assert config.timeout_keep_alive == 3
    assert config.limit_concurrency == 17
    assert isinstance(config.http, type)
    assert config.http.__name__ == "HeaderTimeoutH11Protocol"
    defaults = HttpSettings()
    assert (defaults.max_header_bytes, defaults.keep_alive_timeout_s) == (16_384, 5)
    assert (defaults.header_timeout_s, defaults.max_concurrency) == (10.0, 256)


# -- 9. response headers ---------------------------------------------------------------------------


async def test_every_answer_says_nosniff_and_no_store(backend: FakeBackend) -> None:
    answers: list[httpx.Response] = []
    async with _client(backend) as api:
        answers.append(await api.post("/sagas/order", json=ORDER, headers=AUTH))
        answers.append(await api.get("/sagas", headers=AUTH))
        answers.append(await api.get("/sagas/nope", headers=AUTH))
        answers.append(await api.get("/sagas"))
        answers.append(await api.get("/sagas", params={"limit": 0}, headers=AUTH))
        answers.append(await api.get("/health"))
        answers.append(await api.get("/nowhere"))
        answers.append(await api.post("/sagas/order", content=b"x" * (MIB + 1), headers=AUTH))
    async with _client(FailingBackend()) as api:
        answers.append(await api.post("/sagas/order", json=ORDER, headers=AUTH))
    statuses: Collection[int] = [a.status_code for a in answers]
    assert list(statuses) == [202, 200, 404, 401, 422, 200, 404, 413, 500]
    for answer in answers:
        assert answer.headers["x-content-type-options"] == "nosniff", answer.request.url
        assert answer.headers["cache-control"] == "no-store", answer.request.url
