"""docs/asyncapi.yaml is what `saga contract --asyncapi` generates, and it describes messages
the engine really produces (and refuses broken ones)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from jsonschema import ValidationError

from coordinator.core.definition import SagaRegistry
from coordinator.core.machine import start_saga
from coordinator.core.state import SagaStatus, StartSaga
from coordinator.ops.asyncapi import asyncapi_document, render_asyncapi
from coordinator.ops.client import start_request
from coordinator.store.children import child_end_message
from coordinator.store.messages import command_message, event_message
from saga_defs import OrderSaga, default_registry, trip_registry, versioned_registry
from service_sdk import signal_envelope
from service_sdk.contract import Outcome, Topics, decode_envelope
from service_sdk.service import reply_envelope
from tests.support.asyncapi_check import ASYNCAPI, check_record
from tests.support.shaped_sagas import AwardPoints, approval_saga, booking_registry

NOW = datetime(2026, 12, 1, tzinfo=UTC)
DATA = {
    "order_id": "o-1",
    "customer_id": "c-1",
    "items": [{"sku": "s", "quantity": 1}],
    "amount_cents": 100,
}


def test_the_committed_document_is_the_generated_one() -> None:
    assert ASYNCAPI.read_text() == render_asyncapi(default_registry()), (
        "docs/asyncapi.yaml is stale: saga contract --asyncapi > docs/asyncapi.yaml"
    )


def test_the_committed_trip_document_is_the_generated_one() -> None:
    # The trip example's sagas use every shape: their commands, signals and child sagas.
    committed = (ASYNCAPI.parent / "asyncapi-trip.yaml").read_text()
    assert committed == render_asyncapi(trip_registry()), (
        "docs/asyncapi-trip.yaml is stale: SAGA_REGISTRY=saga_defs:trip_registry "
        "saga contract --asyncapi > docs/asyncapi-trip.yaml"
    )
    document = asyncapi_document(trip_registry())
    assert {"commands_flights", "commands_hotels", "commands_cars", "signals"} <= set(
        document["channels"]
    )


def test_the_document_lists_every_version_and_service() -> None:
    document = asyncapi_document(versioned_registry())
    assert document["asyncapi"] == "3.0.0"
    assert "commands_fraud" in document["channels"]
    assert "reply_fraud_screen_order" in document["components"]["messages"]
    assert "OrderScreened" in document["components"]["schemas"]


def test_messages_the_engine_produces_validate_and_broken_ones_do_not() -> None:
    topics = Topics("t.")
    start = start_request("order", DATA, saga_id="s-1")
    name = check_record(topics.requests, "t.", start.to_bytes(), start.headers())
    assert name == "start_order_start"
    started = start_saga(OrderSaga, "s-1", StartSaga("m", DATA), NOW)
    (outgoing,) = started.commands
    command = command_message(topics, started.instance, outgoing, NOW)
    name = check_record(command.topic, "t.", command.value, command.headers)
    assert name == "command_inventory_reserve_stock"
    for event in started.events:
        message = event_message(topics, started.instance, event, NOW)
        check_record(message.topic, "t.", message.value, message.headers)
    sent = decode_envelope(command.value)
    good = reply_envelope(sent, "inventory", Outcome.SUCCESS, payload={"reservation_id": "r"})
    check_record(topics.replies, "t.", good.to_bytes(), good.headers())
    declined = reply_envelope(sent, "inventory", Outcome.FAILURE, payload={}, error="no stock")
    check_record(topics.replies, "t.", declined.to_bytes(), declined.headers())
    # A success reply without its reply model's required field breaks the contract.
    empty = reply_envelope(sent, "inventory", Outcome.SUCCESS, payload={})
    with pytest.raises(ValidationError, match="reservation_id"):
        check_record(topics.replies, "t.", empty.to_bytes(), empty.headers())
    # So does a command without its reply_to, and a header attempt that is not a number.
    body = json.loads(command.value)
    del body["reply_to"]
    with pytest.raises(ValidationError, match="reply_to"):
        check_record(command.topic, "t.", json.dumps(body).encode(), command.headers)
    with pytest.raises(ValidationError, match="ce_sagaattempt"):
        check_record(command.topic, "t.", command.value, {**command.headers, "ce_sagaattempt": "x"})


def test_signals_and_child_ends_are_in_the_document_and_validate() -> None:
    registry = SagaRegistry([*booking_registry(), approval_saga()])
    document = asyncapi_document(registry)
    channel = document["channels"]["signals"]
    assert channel["address"] == "{prefix}saga.signals"
    assert set(channel["messages"]) == {"signal", "signal_approval"}
    assert "reply_award_points_start" in document["channels"]["replies"]["messages"]
    assert "receive_signals" in document["operations"]
    topics = Topics("t.")

    good = signal_envelope("s-1", "approval", {"approved_by": "ann"})
    name = check_record(topics.signals, "t.", good.to_bytes(), good.headers(), document)
    assert name == "signal_approval"
    bad = signal_envelope("s-1", "approval", {"approved": True})
    with pytest.raises(ValidationError, match="approved_by"):
        check_record(topics.signals, "t.", bad.to_bytes(), bad.headers(), document)
    other = signal_envelope("s-1", "nudge")
    assert check_record(topics.signals, "t.", other.to_bytes(), other.headers(), document) == (
        "signal"
    )

    started = start_saga(
        AwardPoints, "c-1", StartSaga("m", {"customer": "c", "amount": 5}), NOW
    ).instance
    child = replace(
        started,
        status=SagaStatus.COMPLETED,
        data={**started.data, "points": 3},
        parent_saga_id="p-1",
        parent_step="points",
    )
    notice = child_end_message(topics, child, "booking", 1, NOW)
    name = check_record(notice.topic, "t.", notice.value, notice.headers, document)
    assert name == "reply_award_points_start"
    failed = child_end_message(
        topics,
        replace(child, status=SagaStatus.COMPENSATED, failure_reason="no"),
        "booking",
        1,
        NOW,
    )
    check_record(failed.topic, "t.", failed.value, failed.headers, document)
