"""A participant written without the SDK (plain aiokafka and JSON, from the wire contract)
runs the order saga end to end: retryable outcomes, duplicate replies, declines. Everything
that crossed Kafka in the run is then validated against docs/asyncapi.yaml."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from coordinator.config import Settings
from coordinator.ops.client import start_request
from saga_defs import OrderData
from saga_defs.order import OrderItem
from service_sdk import Topics, decode_headers
from tests.support import plain_participant
from tests.support.asyncapi_check import check_record
from tests.support.plain_participant import Answer, PlainParticipant
from tests.support.waiting import eventually

ORDERS = [f"o-{n}" for n in range(30)]
DECLINED = set(ORDERS[:5])
BUSY = set(ORDERS[5:12])
"""Inventory answers these retryable once (a transient failure), then reserves."""


def _order(order_id: str) -> OrderData:
    return OrderData(
        order_id=order_id,
        customer_id="c",
        items=(OrderItem(sku="k", quantity=1),),
        amount_cents=100,
    )


def test_the_participant_imports_nothing_of_the_project() -> None:
    tree = ast.parse(Path(plain_participant.__file__).read_text())
    imported = {
        name
        for node in ast.walk(tree)
        for name in (
            [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else [node.module or ""]
            if isinstance(node, ast.ImportFrom)
            else []
        )
    }
    assert not {n for n in imported if n.split(".")[0] in ("service_sdk", "coordinator")}


async def test_a_participant_without_the_sdk_runs_the_order_saga(
    kafka: Any,
    coordinator_settings: Settings,
    running_coordinator: Any,
    kafka_producer_settings: dict[str, Any],
    fresh_topics: Any,
    send_envelope: Any,
    topic_reader: Any,
) -> None:
    prefix = coordinator_settings.kafka.topic_prefix
    topics = Topics(prefix)
    await fresh_topics("inventory.commands", "payment.commands", "shipping.commands")
    tries: Counter[str] = Counter()

    def inventory(message_type: str, payload: dict[str, Any]) -> Answer:
        order = payload["order_id"]
        if message_type == "inventory.release_stock":
            return Answer(payload={})
        tries[order] += 1
        if order in BUSY and tries[order] == 1:
            return Answer("retryable", error="warehouse busy", final=False)
        return Answer(payload={"reservation_id": f"r-{order}"})

    def payment(message_type: str, payload: dict[str, Any]) -> Answer:
        order = payload["order_id"]
        if message_type == "payment.refund_payment":
            return Answer(payload={})
        if order in DECLINED:
            return Answer("failure", error="card declined")
        return Answer(payload={"charge_id": f"c-{order}", "authorization": "a-1"})

    def shipping(message_type: str, payload: dict[str, Any]) -> Answer:
        return Answer(payload={"shipment_id": f"s-{payload['order_id']}"})

    participant = PlainParticipant(
        kafka.bootstrap_servers,
        prefix,
        {"inventory": inventory, "payment": payment, "shipping": shipping},
        duplicate_replies=True,
        extra_reply_fields={"correlation_id": "from-another-team"},
        producer_settings=kafka_producer_settings,
    )
    async with running_coordinator(coordinator_settings) as coordinator, participant:
        for order in ORDERS:
            await send_envelope(
                topics.requests, start_request("order", _order(order), saga_id=order)
            )
        # A conflicting start, so that the run has a dead letter to check as well.
        other = _order(ORDERS[-1]).model_copy(update={"amount_cents": 7})
        await send_envelope(topics.requests, start_request("order", other, saga_id=ORDERS[-1]))

        async def all_ended() -> dict[str, str]:
            async with coordinator.store.engine.connect() as conn:
                rows = await conn.execute(sa.text("SELECT saga_id, status FROM saga.saga_instance"))
                found = {r.saga_id: r.status for r in rows}
            ended = [s for s in found.values() if s in ("COMPLETED", "COMPENSATED", "FAILED")]
            assert len(ended) == len(ORDERS), f"{len(ended)} of {len(ORDERS)} ended"
            return found

        statuses = await eventually(all_ended, timeout=120)
        # The participant's extra envelope field was ignored and counted.
        extra = coordinator.metrics.unknown_fields.labels(
            "inventory.reserve_stock", "correlation_id"
        )
        assert extra._value.get() >= len(ORDERS)
        async with coordinator.store.engine.connect() as conn:
            kinds = Counter(
                r.kind for r in await conn.execute(sa.text("SELECT kind FROM saga.saga_history"))
            )
    assert {o for o, s in statuses.items() if s == "COMPENSATED"} == DECLINED
    assert {o for o, s in statuses.items() if s == "COMPLETED"} == set(ORDERS) - DECLINED
    # The ledger: every effect once, every declined order's reservation released.
    ran = Counter((e.saga_id, e.message_type) for e in participant.log if e.outcome != "retryable")
    for order in ORDERS:
        assert ran[(order, "inventory.reserve_stock")] == 1
        assert ran[(order, "payment.charge_payment")] == 1
        declined = order in DECLINED
        assert ran[(order, "inventory.release_stock")] == int(declined)
        assert ran[(order, "shipping.schedule_shipment")] == int(not declined)
        assert ran[(order, "payment.refund_payment")] == 0
    assert sum(1 for e in participant.log if e.outcome == "retryable") == len(BUSY)
    # Every reply came twice: the copies were recognised, not applied.
    assert kinds["duplicate_reply"] >= len(ORDERS)
    assert kinds["conflicting_start"] == 1

    # Everything that crossed Kafka validates against the AsyncAPI document.
    checked: Counter[str] = Counter()
    names = [
        topics.requests,
        topics.replies,
        topics.events,
        *(topics.commands(s) for s in ("inventory", "payment", "shipping")),
        Topics.dead_letters(topics.requests),
    ]
    for topic in names:
        async with topic_reader(topic) as reader:
            for record in await reader.published():
                name = check_record(topic, prefix, record.value, decode_headers(record.headers))
                checked[name] += 1
    assert checked["dead_letter"] == 1
    assert checked["start_order_start"] == len(ORDERS) + 1
    for message in (
        "command_inventory_reserve_stock",
        "command_inventory_release_stock",
        "reply_payment_charge_payment",
        "reply_inventory_reserve_stock",
        "event_saga_completed",
        "event_saga_compensated",
    ):
        assert checked[message] > 0, message
    assert sum(checked.values()) > 300
