"""The wire contract as another team meets it, over real Kafka + PostgreSQL: unknown fields
are ignored and counted, stale replies are told at INFO with their reason, and a success reply
whose payload is unusable gets its step compensated (the effect happened)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
import sqlalchemy as sa

from coordinator.config import Settings
from coordinator.core.errors import ConflictingStartError
from coordinator.core.state import SagaStatus
from coordinator.ops.client import start_request
from saga_defs import OrderData
from saga_defs.order import OrderItem
from service_sdk import DeadLetterHeader, Outcome, Topics, decode_headers
from tests.support.offsets import committed_to_end
from tests.support.plain_participant import Answer, PlainParticipant
from tests.support.replies import participant_reply
from tests.support.waiting import eventually

ORDER = OrderData(
    order_id="o-1", customer_id="c-1", items=(OrderItem(sku="k", quantity=1),), amount_cents=100
)


async def _status(coordinator: Any, saga_id: str) -> SagaStatus | None:
    async with coordinator.store.engine.connect() as conn:
        saga = await coordinator.store.select_saga(conn, saga_id)
    return None if saga is None else saga.status


async def _history(coordinator: Any, saga_id: str) -> list[Any]:
    async with coordinator.store.engine.connect() as conn:
        rows = await conn.execute(
            sa.text(
                "SELECT kind, step, detail FROM saga.saga_history WHERE saga_id = :s ORDER BY id"
            ),
            {"s": saga_id},
        )
        return list(rows)


async def test_a_reply_with_unknown_fields_is_applied_and_the_fields_counted(
    coordinator_settings: Settings,
    running_coordinator: Any,
    topic_reader: Any,
    producer: Any,
) -> None:
    topics = Topics(coordinator_settings.kafka.topic_prefix)
    async with running_coordinator(coordinator_settings) as coordinator:
        await coordinator.client.start("order", ORDER, saga_id="u-1")
        async with topic_reader(topics.commands("inventory")) as inventory:
            (reserve,) = await inventory.envelopes(1)
        body = json.loads(participant_reply(reserve, Outcome.SUCCESS, {}).to_bytes())
        # A newer participant: one more envelope field, one more payload field.
        body["correlation_id"] = "corr-7"
        body["payload"] = {"reservation_id": "r-1", "warehouse": "w-3"}
        await producer.send_and_wait(topics.replies, json.dumps(body).encode(), key=reserve.key())
        async with topic_reader(topics.commands("payment")) as payment:
            (charge,) = await payment.envelopes(1)
        assert charge.saga_id == "u-1"
        sample = coordinator.metrics.unknown_fields.labels
        assert sample("inventory.reserve_stock", "correlation_id")._value.get() == 1
        assert sample("inventory.reserve_stock", "payload.warehouse")._value.get() == 1
    history = await _history(coordinator, "u-1")
    (succeeded,) = [h for h in history if h.kind == "step_succeeded"]
    assert succeeded.detail["ignored_fields"] == ["payload.warehouse"]


async def test_a_stale_reply_is_logged_at_info_with_its_reason_and_counted(
    coordinator_settings: Settings,
    running_coordinator: Any,
    topic_reader: Any,
    send_envelope: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    topics = Topics(coordinator_settings.kafka.topic_prefix)
    caplog.set_level(logging.INFO, logger="coordinator.runtime.processor")
    async with running_coordinator(coordinator_settings) as coordinator:
        await coordinator.client.start("order", ORDER, saga_id="st-1")
        async with topic_reader(topics.commands("inventory")) as inventory:
            (reserve,) = await inventory.envelopes(1)
        # The compensation's name where the forward step's belongs.
        wrong = participant_reply(reserve, Outcome.SUCCESS, {"reservation_id": "r"})
        await send_envelope(topics.replies, wrong.model_copy(update={"step": "release_stock"}))

        def logged() -> Any:
            return [
                r
                for r in caplog.records
                if r.levelno == logging.INFO and "unknown_step" in r.getMessage()
            ]

        (line,) = await eventually(logged)
        assert "st-1" in line.getMessage()
        counter = coordinator.metrics.stale_replies.labels("order", "unknown_step")
        assert counter._value.get() == 1
        assert await _status(coordinator, "st-1") is SagaStatus.RUNNING


async def test_an_empty_success_reply_gets_its_step_compensated_and_nothing_leaks(
    kafka: Any,
    coordinator_settings: Settings,
    running_coordinator: Any,
    kafka_producer_settings: dict[str, Any],
    fresh_topics: Any,
) -> None:
    await fresh_topics("inventory.commands", "payment.commands", "shipping.commands")
    handlers = {
        "inventory": lambda t, p: Answer(payload={"reservation_id": "r-1"}),
        # The charge happens, but its reply carries no charge_id.
        "payment": lambda t, p: Answer(payload={}),
        "shipping": lambda t, p: Answer(payload={"shipment_id": "s-1"}),
    }
    participant = PlainParticipant(
        kafka.bootstrap_servers,
        coordinator_settings.kafka.topic_prefix,
        handlers,
        producer_settings=kafka_producer_settings,
    )
    async with running_coordinator(coordinator_settings) as coordinator, participant:
        await coordinator.client.start("order", ORDER, saga_id="e-1")

        async def compensated() -> bool:
            assert await _status(coordinator, "e-1") is SagaStatus.COMPENSATED
            return True

        await eventually(compensated, timeout=60)
        history = await _history(coordinator, "e-1")
    ran = [e.message_type for e in participant.log]
    # Every effect has its undo: the charge whose reply was unusable is refunded too.
    assert ran == [
        "inventory.reserve_stock",
        "payment.charge_payment",
        "payment.refund_payment",
        "inventory.release_stock",
    ]
    (failed,) = [h for h in history if h.kind == "step_failed"]
    assert failed.step == "charge_payment"
    assert failed.detail["in_doubt"] is True
    assert "invalid reply" in failed.detail["error"]
    assert "charge_id" in failed.detail["error"]


async def test_a_start_reusing_a_saga_id_with_other_data_is_dead_lettered_and_recorded(
    coordinator_settings: Settings,
    running_coordinator: Any,
    topic_reader: Any,
    send_envelope: Any,
    kafka_bootstrap: str,
) -> None:
    topics = Topics(coordinator_settings.kafka.topic_prefix)
    first = start_request("order", ORDER, saga_id="c-1", source="shop")
    same = start_request("order", ORDER, saga_id="c-1", source="shop")
    other = start_request(
        "order", ORDER.model_copy(update={"amount_cents": 999}), saga_id="c-1", source="shop"
    )
    async with running_coordinator(coordinator_settings) as coordinator:
        for envelope in (first, same, other):
            await send_envelope(topics.requests, envelope)
        async with topic_reader(Topics.dead_letters(topics.requests)) as dlq:
            (letter,) = await dlq.records(1)
        headers = decode_headers(letter.headers)
        assert headers[DeadLetterHeader.REASON] == "conflicting_start"
        assert "c-1" in headers[DeadLetterHeader.EXCEPTION_MESSAGE]
        assert json.loads(letter.value)["message_id"] == other.message_id
        await committed_to_end(
            kafka_bootstrap, coordinator_settings.kafka.group_id, topics.requests
        )
        async with topic_reader(Topics.dead_letters(topics.requests)) as dlq:
            assert len(await dlq.published()) == 1, "the repeat with the same data is no conflict"
        # From Python, the same refusal is an exception naming the stored saga.
        with pytest.raises(ConflictingStartError) as refused:
            await coordinator.client.start(
                "order", ORDER.model_copy(update={"customer_id": "c-2"}), saga_id="c-1"
            )
        assert refused.value.saga_id == "c-1"
        assert await coordinator.client.start("order", ORDER, saga_id="c-1") == "c-1"
        async with coordinator.store.engine.connect() as conn:
            saga = await coordinator.store.select_saga(conn, "c-1")
    assert saga is not None
    assert saga.data["amount_cents"] == ORDER.amount_cents
    history = await _history(coordinator, "c-1")
    conflicts = [h for h in history if h.kind == "conflicting_start"]
    assert [h.detail["data"]["amount_cents"] for h in conflicts] == [999, 100]
    assert conflicts[0].detail["source"] == "shop"
