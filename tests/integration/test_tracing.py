"""One trace per saga, end to end: start request -> commands -> participants -> replies.

The coordinator and the three example participants (SDK runners) run in-process against real
Kafka and PostgreSQL; OpenTelemetry's in-memory exporter collects the spans of both sides.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import httpx
from aiokafka import AIOKafkaProducer
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.app import Coordinator
from coordinator.config import Settings
from coordinator.core.state import SagaStatus
from coordinator.demo.participants import PARTICIPANTS, install_all, inventory, payment
from coordinator.observability.tracing import is_valid_traceparent, trace_id_of
from coordinator.ops.client import start_request
from saga_defs import OrderData
from saga_defs.order import OrderItem
from service_sdk import (
    Envelope,
    Header,
    KafkaConfig,
    ServiceRunner,
    Topics,
    decode_envelope,
    decode_headers,
    encode_headers,
)
from tests.support.waiting import eventually

if TYPE_CHECKING:
    from coordinator.devstack import KafkaService

TOKEN = "trace-token"
GIVEN = {
    "kafka": "00-11111111111111111111111111111111-2222222222222222-01",
    "http": "00-33333333333333333333333333333333-4444444444444444-01",
    "header": "00-55555555555555555555555555555555-6666666666666666-01",
}


def _order(order_id: str) -> OrderData:
    return OrderData(
        order_id=order_id,
        customer_id="c-ok",
        items=(OrderItem(sku="A", quantity=1),),
        amount_cents=500,
    )


@contextlib.asynccontextmanager
async def _participants(
    kafka: KafkaService, engine: AsyncEngine, topics: Topics
) -> AsyncIterator[None]:
    async with engine.begin() as conn:
        await install_all(conn)
        await inventory.seed(conn, {"A": 100})
        await payment.seed(conn, {"c-ok": "ok"})
    config = KafkaConfig(
        kafka.bootstrap_servers,
        idempotent=kafka.supports_idempotence,
        session_timeout_ms=6_000,
        heartbeat_interval_ms=500,
    )
    async with contextlib.AsyncExitStack() as stack:
        for name, participant in PARTICIPANTS.items():
            runner = ServiceRunner(
                participant.service,
                kafka=config,
                engine=engine,
                topics=topics,
                group_id=f"{topics.prefix}{name}-service",
            )
            await stack.enter_async_context(runner)
        yield


async def _wait_completed(coordinator: Coordinator, saga_ids: list[str]) -> None:
    async def completed() -> bool:
        async with coordinator.store.engine.connect() as conn:
            sagas = [await coordinator.store.select_saga(conn, s) for s in saga_ids]
        statuses = {
            s: saga.status if saga else None for s, saga in zip(saga_ids, sagas, strict=True)
        }
        assert all(status is SagaStatus.COMPLETED for status in statuses.values()), statuses
        return True

    await eventually(completed, timeout=60, interval=0.2, what="the sagas to complete")


def _trace_ids(envelopes: list[tuple[Envelope, dict[str, str]]]) -> dict[str, set[str | None]]:
    """Per saga, every trace id its messages carry (in the body and in the header)."""
    found: dict[str, set[str | None]] = defaultdict(set)
    for envelope, headers in envelopes:
        found[envelope.saga_id].add(trace_id_of(envelope.traceparent))
        found[envelope.saga_id].add(trace_id_of(headers.get(Header.TRACEPARENT)))
    return found


async def test_every_command_and_reply_of_a_saga_carries_its_one_trace(
    coordinator_settings: Settings,
    running_coordinator: Any,
    kafka: KafkaService,
    db_engine: AsyncEngine,
    send_envelope: Any,
    producer: AIOKafkaProducer,
    topic_reader: Any,
    span_exporter: Any,
) -> None:
    topics = Topics(coordinator_settings.kafka.topic_prefix)
    coordinator_settings.http.token = SecretStr(TOKEN)
    async with running_coordinator(coordinator_settings) as coordinator:
        assert coordinator.http is not None
        await coordinator.http.wait_started()
        async with _participants(kafka, db_engine, topics):
            # A Kafka start request with a traceparent, one over HTTP with the header, and
            # one without any: the coordinator starts a trace for it.
            await send_envelope(
                topics.requests,
                start_request(
                    "order", _order("kafka"), saga_id="kafka", traceparent=GIVEN["kafka"]
                ),
            )
            await send_envelope(
                topics.requests, start_request("order", _order("none"), saga_id="none")
            )
            # W3C's Kafka convention: the trace context only in the record's header.
            header_only = start_request("order", _order("header"), saga_id="header")
            await producer.send_and_wait(
                topics.requests,
                header_only.to_bytes(),
                key=header_only.key(),
                headers=encode_headers(
                    {**header_only.headers(), Header.TRACEPARENT: GIVEN["header"]}
                ),
            )
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{coordinator.http.port}", timeout=15.0
            ) as api:
                response = await api.post(
                    "/sagas/order",
                    params={"saga_id": "http"},
                    json=_order("http").model_dump(mode="json"),
                    headers={"Authorization": f"Bearer {TOKEN}", "traceparent": GIVEN["http"]},
                )
                assert response.status_code == 202, response.text
            await _wait_completed(coordinator, ["kafka", "http", "none", "header"])

        async with coordinator.store.engine.connect() as conn:
            generated = await coordinator.store.select_saga(conn, "none")
        assert generated is not None
        assert is_valid_traceparent(generated.traceparent)
        expected = {
            "kafka": trace_id_of(GIVEN["kafka"]),
            "http": trace_id_of(GIVEN["http"]),
            "header": trace_id_of(GIVEN["header"]),
            "none": trace_id_of(generated.traceparent),
        }

        # One command per participant and three replies per saga, each with the saga's trace id only.
        messages: list[tuple[Envelope, dict[str, str]]] = []
        for service in PARTICIPANTS:
            async with topic_reader(topics.commands(service)) as reader:
                records = await reader.records(len(expected))
            messages.extend(_decoded(records))
        async with topic_reader(topics.replies) as reader:
            replies = _decoded(await reader.records(3 * len(expected)))
        assert len(messages) == 3 * len(expected)
        assert {e.kind.value for e, _ in replies} == {"reply"}
        for found in (_trace_ids(messages), _trace_ids(replies)):
            assert dict(found) == {saga: {trace} for saga, trace in expected.items()}

    # The spans of both sides: one trace per saga, from start to the last reply applied.
    per_saga: dict[str, set[str]] = defaultdict(set)
    names: dict[str, set[str]] = defaultdict(set)
    for span in span_exporter.get_finished_spans():
        saga_id = (span.attributes or {}).get("saga.id")
        if saga_id in expected:
            per_saga[str(saga_id)].add(format(span.context.trace_id, "032x"))
            names[str(saga_id)].add(span.name.split(" ")[0])
    assert per_saga == {saga: {trace} for saga, trace in expected.items()}
    for saga_id in expected:
        assert {"saga.start", "saga.apply", "publish", "process"} <= names[saga_id], saga_id


def _decoded(records: list[Any]) -> list[tuple[Envelope, dict[str, str]]]:
    return [(decode_envelope(r.value), decode_headers(r.headers)) for r in records]
