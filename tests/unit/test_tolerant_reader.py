"""Tolerant reader and typed replies: unknown fields are ignored and counted, never refused;
a success reply that does not fit its command's reply model gets its step compensated."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, ClassVar

import pytest
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from coordinator.core.batch import BatchOutcome, count_unknown_fields
from coordinator.core.definition import SagaDefinition, Step
from coordinator.core.errors import SagaDefinitionError
from coordinator.core.machine import apply, start_saga
from coordinator.core.state import HistoryKind, ReplyReceived, SagaStatus, StartSaga
from coordinator.observability.logs import log_unexpected_replies
from coordinator.observability.metrics import CoordinatorMetrics
from saga_defs.order import OrderSaga, StockReserved
from service_sdk.contract import Command, Envelope, MessageKind, Outcome

NOW = datetime(2026, 12, 1, tzinfo=UTC)
DATA: dict[str, Any] = {
    "order_id": "o-1",
    "customer_id": "c-1",
    "items": [{"sku": "s", "quantity": 1}],
    "amount_cents": 100,
}


def _reply(saga: Any, payload: dict[str, Any], outcome: Outcome = Outcome.SUCCESS) -> ReplyReceived:
    return ReplyReceived("r-1", saga.current_step, saga.command_id, 1, outcome, payload)


def test_unknown_start_fields_are_ignored_and_recorded() -> None:
    started = start_saga(OrderSaga, "s-1", StartSaga("m", {**DATA, "channel": "web"}), NOW)
    assert started.instance.status is SagaStatus.RUNNING
    assert "channel" not in started.instance.data
    (entry,) = [e for e in started.history if e.kind is HistoryKind.STARTED]
    assert entry.detail["ignored_fields"] == ["channel"]
    assert entry.detail["message_type"] == "order.start"


def test_on_success_receives_the_typed_reply_and_unknown_payload_fields_are_recorded() -> None:
    seen: list[object] = []

    class Data(BaseModel):
        reservation_id: str | None = None

    class Reserve(Command):
        message_type: ClassVar[str] = "inventory.reserve"
        reply_model: ClassVar[type[BaseModel] | None] = StockReserved

    def folded(data: Data, reply: StockReserved) -> Data:
        seen.append(reply)
        return data.model_copy(update={"reservation_id": reply.reservation_id})

    class Typed(SagaDefinition[Data]):
        name = "typed"
        data_model = Data
        steps = (
            Step[Data](
                name="reserve",
                service="inventory",
                command=Reserve,
                build=lambda d: Reserve(),
                on_success=folded,
            ),
        )

    saga = start_saga(Typed, "s-1", StartSaga("m", {}), NOW).instance
    done = apply(Typed, saga, _reply(saga, {"reservation_id": "r-9", "warehouse": "w-2"}), NOW)
    assert seen == [StockReserved(reservation_id="r-9")]
    assert done.instance.status is SagaStatus.COMPLETED
    (entry,) = [e for e in done.history if e.kind is HistoryKind.STEP_SUCCEEDED]
    assert entry.detail["ignored_fields"] == ["payload.warehouse"]
    assert entry.detail["message_type"] == "inventory.reserve"


def test_an_empty_success_reply_is_an_unusable_result_whose_step_is_compensated() -> None:
    saga = start_saga(OrderSaga, "s-1", StartSaga("m", DATA), NOW).instance
    t = apply(OrderSaga, saga, _reply(saga, {}), NOW)
    (failed,) = [e for e in t.history if e.kind is HistoryKind.STEP_FAILED]
    assert failed.detail["in_doubt"] is True
    assert "reservation_id" in failed.detail["error"]
    assert failed.detail["error"].startswith("invalid reply")
    assert t.instance.status is SagaStatus.COMPENSATING
    assert [c.message_type for c in t.commands] == ["inventory.release_stock"]


def test_a_reply_model_that_is_not_a_pydantic_model_is_refused_at_definition() -> None:
    class Bad(Command):
        message_type: ClassVar[str] = "x.bad"
        reply_model: ClassVar[Any] = dict

    class Data(BaseModel):
        pass

    with pytest.raises(SagaDefinitionError, match="reply_model must be a pydantic model"):

        class Broken(SagaDefinition[Data]):
            name = "broken"
            data_model = Data
            steps = (Step[Data](name="a", service="x", command=Bad, build=lambda d: Bad()),)


def test_unknown_fields_are_counted_by_message_type_and_field() -> None:
    registry = CollectorRegistry()
    metrics = CoordinatorMetrics(registry)
    envelope = Envelope.model_validate(
        {
            "kind": "reply",
            "message_type": "inventory.reserve_stock",
            "saga_id": "s-1",
            "saga_type": "order",
            "outcome": "success",
            "correlation_id": "c-1",
        }
    )
    assert envelope.kind is MessageKind.REPLY
    counts = count_unknown_fields([envelope, envelope])
    assert counts == {("inventory.reserve_stock", "correlation_id"): 2}
    started = start_saga(OrderSaga, "s-1", StartSaga("m", {**DATA, "channel": "web"}), NOW)
    metrics.observe_batch(BatchOutcome(unknown_fields=counts, transitions=[(None, started)]))
    sample = registry.get_sample_value
    labels = {"message_type": "inventory.reserve_stock", "field": "correlation_id"}
    assert sample("saga_unknown_fields_total", labels) == 2
    labels = {"message_type": "order.start", "field": "channel"}
    assert sample("saga_unknown_fields_total", labels) == 1


def test_stale_replies_are_counted_by_reason_and_logged_at_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = CollectorRegistry()
    metrics = CoordinatorMetrics(registry)
    saga = start_saga(OrderSaga, "s-1", StartSaga("m", DATA), NOW).instance
    # A compensation's name as the step: the participant forgot that replies carry the
    # forward step's name.
    wrong = ReplyReceived(
        "r-1", "release_stock", saga.command_id, 1, Outcome.SUCCESS, {"reservation_id": "x"}
    )
    t = apply(OrderSaga, saga, wrong, NOW)
    metrics.observe_batch(BatchOutcome(transitions=[(saga, t)]))
    labels = {"saga_type": "order", "reason": "unknown_step"}
    assert registry.get_sample_value("saga_stale_replies_total", labels) == 1
    logger = logging.getLogger("test.stale")
    with caplog.at_level(logging.INFO, logger="test.stale"):
        log_unexpected_replies(logger, [(saga, t)])
    (record,) = caplog.records
    assert record.levelno == logging.INFO
    assert "unknown_step" in record.getMessage()
    assert "release_stock" in record.getMessage()
    assert "reserve_inventory" in record.getMessage()
