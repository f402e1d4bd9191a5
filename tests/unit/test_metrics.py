"""Metrics derived from transitions, the sampled gauges, and the participant observer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

from coordinator.core.batch import BatchOutcome
from coordinator.core.machine import apply, start_saga
from coordinator.core.state import (
    DeadlineFired,
    ReplyReceived,
    SagaInstance,
    SagaStatus,
    SignalReceived,
    StartSaga,
    Transition,
)
from coordinator.observability.metrics import CoordinatorMetrics
from saga_defs import default_registry
from saga_defs.order import OrderSaga
from service_sdk import Outcome, ServiceMetrics
from tests.support.shaped_sagas import approval_saga

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
DATA: dict[str, Any] = {
    "order_id": "o-1",
    "customer_id": "c-1",
    "items": [{"sku": "SKU-1", "quantity": 2}],
    "amount_cents": 1500,
}
PAYLOADS = {
    "reserve_inventory": {"reservation_id": "r-1"},
    "charge_payment": {"charge_id": "ch-1"},
    "schedule_shipping": {"shipment_id": "sh-1"},
}


def _reply(instance: SagaInstance, outcome: Outcome, message_id: str) -> ReplyReceived:
    step = instance.current_step
    assert step is not None
    return ReplyReceived(
        message_id=message_id,
        step=step,
        command_id=instance.command_id,
        attempt=instance.attempt,
        outcome=outcome,
        payload=PAYLOADS[step] if outcome is Outcome.SUCCESS else {},
        error=None if outcome is Outcome.SUCCESS else "declined",
    )


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def _run(outcomes: list[Outcome]) -> tuple[list[tuple[SagaInstance | None, Transition]], float]:
    """A saga driven by replies one second apart; returns the (before, transition) pairs."""
    first = start_saga(OrderSaga, "s-1", StartSaga("m-0", DATA), T0)
    pairs: list[tuple[SagaInstance | None, Transition]] = [(None, first)]
    instance = first.instance
    seconds = 0.0
    for index, outcome in enumerate(outcomes, start=1):
        seconds = float(index)
        before = instance
        transition = apply(
            OrderSaga, before, _reply(before, outcome, f"m-{index}"), T0 + timedelta(seconds=index)
        )
        pairs.append((before, transition))
        instance = transition.instance
    return pairs, seconds


def test_a_completed_saga_counts_start_steps_commands_and_duration() -> None:
    registry = CollectorRegistry()
    metrics = CoordinatorMetrics(registry)
    pairs, seconds = _run([Outcome.SUCCESS] * 3)
    metrics.observe_batch(BatchOutcome(applied=4, transitions=pairs, records=5, duplicates=1))

    assert _value(registry, "saga_started_total", saga_type="order") == 1
    assert _value(registry, "saga_finished_total", saga_type="order", status="COMPLETED") == 1
    assert _value(registry, "saga_replies_total", saga_type="order", outcome="success") == 3
    assert _value(registry, "saga_redelivered_messages_total") == 1
    assert _value(registry, "saga_consumer_batch_size_sum") == 5
    for service in ("inventory", "payment", "shipping"):
        assert (
            _value(
                registry,
                "saga_commands_sent_total",
                saga_type="order",
                service=service,
                purpose="forward",
            )
            == 1
        )
    assert (
        _value(
            registry,
            "saga_step_duration_seconds_count",
            saga_type="order",
            step="charge_payment",
            outcome="success",
        )
        == 1
    )
    # Each step's reply came one second after its command.
    assert (
        _value(
            registry,
            "saga_step_duration_seconds_sum",
            saga_type="order",
            step="charge_payment",
            outcome="success",
        )
        == 1.0
    )
    assert (
        _value(registry, "saga_duration_seconds_sum", saga_type="order", status="COMPLETED")
        == seconds
    )


def test_a_declined_payment_counts_a_step_failure_and_compensation() -> None:
    registry = CollectorRegistry()
    metrics = CoordinatorMetrics(registry)
    pairs, _ = _run([Outcome.SUCCESS, Outcome.FAILURE, Outcome.SUCCESS])
    metrics.observe_batch(BatchOutcome(transitions=pairs))

    assert _value(registry, "saga_step_failures_total", saga_type="order", step="charge_payment")
    assert _value(
        registry,
        "saga_step_duration_seconds_count",
        saga_type="order",
        step="charge_payment",
        outcome="failure",
    )
    assert (
        _value(
            registry,
            "saga_commands_sent_total",
            saga_type="order",
            service="inventory",
            purpose="compensation",
        )
        == 1
    )
    assert _value(registry, "saga_finished_total", saga_type="order", status="COMPENSATED") == 1
    assert _value(registry, "saga_replies_total", saga_type="order", outcome="failure") == 1


def test_a_repeated_reply_counts_as_duplicate_not_as_a_step() -> None:
    registry = CollectorRegistry()
    metrics = CoordinatorMetrics(registry)
    pairs, _ = _run([Outcome.SUCCESS])
    before, done = pairs[-1]
    assert before is not None
    again = apply(
        OrderSaga, done.instance, _reply(before, Outcome.SUCCESS, "m-again"), T0 + timedelta(1)
    )
    metrics.observe_batch(BatchOutcome(transitions=[*pairs, (done.instance, again)]))

    assert _value(registry, "saga_unexpected_replies_total", saga_type="order", kind="duplicate")
    assert (
        _value(
            registry,
            "saga_step_duration_seconds_count",
            saga_type="order",
            step="reserve_inventory",
            outcome="success",
        )
        == 1
    )


def test_fired_deadlines_count_retries_by_step() -> None:
    registry = CollectorRegistry()
    metrics = CoordinatorMetrics(registry)
    started = start_saga(OrderSaga, "s-1", StartSaga("m-0", DATA), T0).instance
    assert started.deadline_at is not None
    assert started.command_id is not None
    fired = apply(
        OrderSaga,
        started,
        DeadlineFired("reserve_inventory", started.command_id, started.attempt),
        started.deadline_at,
    )
    metrics.observe_deadlines([fired])

    assert _value(
        registry, "saga_deadlines_fired_total", saga_type="order", step="reserve_inventory"
    )
    assert _value(
        registry,
        "saga_commands_sent_total",
        saga_type="order",
        service="inventory",
        purpose="retry",
    )
    # A deadline is not a reply.
    assert _value(registry, "saga_replies_total", saga_type="order", outcome="success") == 0


def test_signals_count_by_outcome() -> None:
    saga = approval_saga()
    registry = CollectorRegistry()
    metrics = CoordinatorMetrics(registry)
    metrics.prime([saga])
    assert _value(registry, "saga_signals_total", saga_type="approval_flow", outcome="kept") == 0
    started = start_saga(saga, "a-1", StartSaga("m", {"order_id": "o"}), T0)
    kept = apply(
        saga, started.instance, SignalReceived("s-1", "approval", {"approved_by": "x"}), T0
    )
    refused = apply(saga, kept.instance, SignalReceived("s-2", "nudge", {}), T0)
    metrics.observe_batch(
        BatchOutcome(transitions=[(started.instance, kept), (kept.instance, refused)])
    )
    for outcome, count in (("kept", 1), ("rejected", 1), ("received", 0)):
        got = _value(registry, "saga_signals_total", saga_type="approval_flow", outcome=outcome)
        assert got == count, outcome


def test_priming_creates_zero_series_for_every_known_saga() -> None:
    registry = CollectorRegistry()
    metrics = CoordinatorMetrics(registry)
    metrics.prime(default_registry())
    assert registry.get_sample_value(
        "saga_finished_total", {"saga_type": "order", "status": "FAILED"}
    ) == (0.0)
    assert registry.get_sample_value("saga_overdue_sagas", {"saga_type": "order"}) == 0.0
    assert (
        registry.get_sample_value(
            "saga_deadlines_fired_total", {"saga_type": "order", "step": "schedule_shipping"}
        )
        == 0.0
    )


def test_sampled_gauges_fill_absent_statuses_and_drop_revoked_partitions() -> None:
    registry = CollectorRegistry()
    metrics = CoordinatorMetrics(registry)
    metrics.set_saga_counts({("order", SagaStatus.RUNNING): 3}, ["order"])
    assert _value(registry, "saga_instances", saga_type="order", status="RUNNING") == 3
    assert (
        registry.get_sample_value("saga_instances", {"saga_type": "order", "status": "FAILED"}) == 0
    )
    metrics.set_outbox(4, 2.5)
    assert _value(registry, "saga_outbox_oldest_age_seconds") == 2.5

    metrics.set_consumer_lag({TopicPartition("r", 0): 5, TopicPartition("r", 1): 0})
    assert _value(registry, "saga_consumer_lag_messages", topic="r", partition="0") == 5
    metrics.set_consumer_lag({TopicPartition("r", 1): 2})
    assert (
        registry.get_sample_value("saga_consumer_lag_messages", {"topic": "r", "partition": "0"})
        is None
    )
    assert _value(registry, "saga_consumer_lag_messages", topic="r", partition="1") == 2


def test_a_broken_batch_never_raises_out_of_the_hook() -> None:
    metrics = CoordinatorMetrics(CollectorRegistry())
    metrics.observe_batch(BatchOutcome(transitions=[(None, object())]))  # type: ignore[list-item]


def test_service_metrics_time_handler_runs_only() -> None:
    registry = CollectorRegistry()
    observer = ServiceMetrics(registry, "payment")
    observer.command_processed("payment.charge_payment", "success", 0.02)
    observer.command_processed("payment.charge_payment", "duplicate", 0.001)
    observer.handler_failed("payment.charge_payment", 1)
    observer.dead_lettered("payment.commands", "handler_error")

    labels = {"service": "payment", "message_type": "payment.charge_payment"}
    assert registry.get_sample_value(
        "saga_participant_commands_total", {**labels, "result": "duplicate"}
    ) == (1.0)
    assert registry.get_sample_value("saga_participant_handler_duration_seconds_count", labels) == (
        1.0
    )
    assert registry.get_sample_value("saga_participant_handler_errors_total", labels) == 1.0
    assert (
        registry.get_sample_value(
            "saga_dead_letters_total", {"topic": "payment.commands", "reason": "handler_error"}
        )
        == 1.0
    )


def test_the_sdk_primes_every_reason_the_runner_dead_letters_with() -> None:
    import inspect
    import re

    from service_sdk import runner
    from service_sdk.metrics import DEAD_LETTER_REASONS

    used = set(re.findall(r"DeadLetterReason\.(\w+)", inspect.getsource(runner)))
    assert used
    assert used <= {reason.name for reason in DEAD_LETTER_REASONS}

    registry = CollectorRegistry()
    ServiceMetrics(registry, "inventory", topic="inventory.commands")
    for reason in DEAD_LETTER_REASONS:
        labels = {"topic": "inventory.commands", "reason": reason}
        assert registry.get_sample_value("saga_dead_letters_total", labels) == 0.0


def test_the_coordinator_primes_dead_letters_of_the_topics_it_reads() -> None:
    registry = CollectorRegistry()
    CoordinatorMetrics(registry).prime(default_registry(), dead_letter_topics=["saga.replies"])
    for reason in ("malformed", "unknown_saga", "processing_error"):
        labels = {"topic": "saga.replies", "reason": reason}
        assert registry.get_sample_value("saga_dead_letters_total", labels) == 0.0
