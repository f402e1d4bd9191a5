"""The pure saga engine, driven through the order saga (and a few purpose-built definitions)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from coordinator.core.definition import Compensation, RetryPolicy, SagaDefinition, Step
from coordinator.core.errors import (
    InvalidOperatorActionError,
    InvalidSagaDataError,
    SagaDefinitionError,
)
from coordinator.core.machine import apply, start_saga
from coordinator.core.state import (
    CommandPurpose,
    DeadlineFired,
    HistoryKind,
    LifecycleKind,
    OperatorAbort,
    OperatorRetry,
    OutgoingCommand,
    ReplyReceived,
    SagaInput,
    SagaInstance,
    SagaStatus,
    StartSaga,
    Transition,
    command_id_for,
)
from saga_defs.order import OrderSaga
from service_sdk import Command, Outcome

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
SAGA_ID = "saga-1"
DATA: dict[str, Any] = {
    "order_id": "o-1",
    "customer_id": "c-1",
    "items": [{"sku": "SKU-1", "quantity": 2}],
    "amount_cents": 1500,
}
STEPS = ("reserve_inventory", "charge_payment", "schedule_shipping")
SUCCESS_PAYLOADS: dict[str, dict[str, Any]] = {
    "reserve_inventory": {"reservation_id": "r-1"},
    "charge_payment": {"charge_id": "ch-1"},
    "schedule_shipping": {"shipment_id": "sh-1"},
}
ITEMS = [{"sku": "SKU-1", "quantity": 2}]


def fwd(step: str) -> str:
    return command_id_for(SAGA_ID, step, compensation=False)


def comp(step: str, epoch: int = 0) -> str:
    return command_id_for(SAGA_ID, step, compensation=True, epoch=epoch)


def kinds(t: Transition) -> list[HistoryKind]:
    return [entry.kind for entry in t.history]


def events(t: Transition) -> list[LifecycleKind]:
    return [event.kind for event in t.events]


def start(data: dict[str, Any] | None = None) -> Transition:
    event = StartSaga("m-start", DATA if data is None else data, traceparent="00-abc-def-01")
    return start_saga(OrderSaga, SAGA_ID, event, NOW)


def answer(
    inst: SagaInstance,
    outcome: Outcome = Outcome.SUCCESS,
    payload: dict[str, Any] | None = None,
    *,
    step: str | None = None,
    command_id: str | None = None,
    attempt: int | None = None,
    error: str | None = None,
    message_id: str = "m-reply",
) -> ReplyReceived:
    """A reply to the awaited command unless told otherwise; success payloads by default."""
    step = step or inst.current_step
    assert step is not None
    if payload is None:
        payload = SUCCESS_PAYLOADS[step] if outcome is Outcome.SUCCESS else {}
    return ReplyReceived(
        message_id=message_id,
        step=step,
        command_id=command_id or inst.command_id,
        attempt=inst.attempt if attempt is None else attempt,
        outcome=outcome,
        payload=payload,
        error=error,
    )


def step_apply(inst: SagaInstance, event: SagaInput, at: datetime = NOW) -> Transition:
    return apply(OrderSaga, inst, event, at)


def awaiting(step: str) -> SagaInstance:
    """A running order saga awaiting ``step``'s reply (earlier steps succeeded)."""
    inst = start().instance
    while inst.current_step != step:
        inst = step_apply(inst, answer(inst)).instance
    return inst


def compensating_after_failure_at(step: str) -> SagaInstance:
    inst = awaiting(step)
    return step_apply(inst, answer(inst, Outcome.FAILURE, error="no")).instance


def failed_saga() -> SagaInstance:
    """FAILED because the refund of charge_payment was refused."""
    inst = compensating_after_failure_at("schedule_shipping")
    assert inst.current_step == "charge_payment"
    return step_apply(inst, answer(inst, Outcome.FAILURE, error="bank down")).instance


def deadline(inst: SagaInstance, random_unit: float = 0.5) -> DeadlineFired:
    assert inst.current_step is not None
    assert inst.command_id is not None
    return DeadlineFired(inst.current_step, inst.command_id, inst.attempt, random_unit)


# --- start -----------------------------------------------------------------------------------


def test_start_creates_a_running_saga_and_sends_the_first_command() -> None:
    t = start()

    assert t.changed
    inst = t.instance
    assert inst.saga_id == SAGA_ID
    assert inst.saga_type == "order"
    assert inst.definition_version == 1
    assert inst.status is SagaStatus.RUNNING
    assert inst.data == {
        **DATA,
        "currency": "EUR",
        "reservation_id": None,
        "charge_id": None,
        "shipment_id": None,
    }
    assert (inst.created_at, inst.updated_at) == (NOW, NOW)
    assert inst.traceparent == "00-abc-def-01"
    assert inst.version == 0
    assert inst.current_step == "reserve_inventory"
    assert inst.command_id == fwd("reserve_inventory")
    assert inst.attempt == 1
    assert inst.deadline_at == NOW + timedelta(seconds=30)
    assert t.commands == (
        OutgoingCommand(
            service="inventory",
            step="reserve_inventory",
            message_type="inventory.reserve_stock",
            command_id=fwd("reserve_inventory"),
            attempt=1,
            payload={"order_id": "o-1", "items": ITEMS},
            purpose=CommandPurpose.FORWARD,
        ),
    )
    assert kinds(t) == [HistoryKind.STARTED, HistoryKind.COMMAND_SENT]
    assert all(entry.message_id == "m-start" for entry in t.history)
    assert t.history[0].detail["data"] == inst.data
    assert events(t) == [LifecycleKind.STARTED]


@pytest.mark.parametrize(
    "data",
    [
        {},
        {**DATA, "amount_cents": 0},
        {**DATA, "items": []},
        {**DATA, "unexpected": 1},
    ],
)
def test_start_with_invalid_data_raises(data: dict[str, Any]) -> None:
    with pytest.raises(InvalidSagaDataError) as info:
        start(data)
    assert info.value.saga_id == SAGA_ID
    assert "order" in str(info.value)


def test_command_ids_are_deterministic() -> None:
    assert start().commands == start().commands
    assert start().commands[0].command_id == fwd("reserve_inventory")
    other = start_saga(OrderSaga, "saga-2", StartSaga("m", DATA), NOW)
    assert other.commands[0].command_id != fwd("reserve_inventory")
    assert fwd("reserve_inventory") != comp("reserve_inventory")
    assert fwd("reserve_inventory") != fwd("charge_payment")


def test_epoch_zero_command_ids_are_the_ids_sagas_always_had() -> None:
    # Pinned: participants' records of sagas already running hold these ids.
    assert fwd("charge_payment") == "1e86ee00-8163-508e-9df8-963898a970d5"
    assert comp("charge_payment") == "568f0baa-1688-5f4e-8d0a-1918d7fc3c39"
    assert command_id_for(SAGA_ID, "charge_payment", compensation=True, epoch=0) == comp(
        "charge_payment"
    )


def test_each_epoch_has_its_own_deterministic_command_ids() -> None:
    ids = {comp("charge_payment", epoch) for epoch in range(4)}
    assert len(ids) == 4
    assert comp("charge_payment", 2) == comp("charge_payment", 2)
    assert command_id_for(SAGA_ID, "charge_payment", compensation=False, epoch=1) not in ids
    with pytest.raises(ValueError, match="epoch"):
        command_id_for(SAGA_ID, "charge_payment", compensation=True, epoch=-1)


# --- forward -------------------------------------------------------------------------------


def test_happy_path_completes_with_exact_commands() -> None:
    inst = start().instance
    later = NOW + timedelta(seconds=5)

    t1 = step_apply(inst, answer(inst), later)
    assert kinds(t1) == [HistoryKind.STEP_SUCCEEDED, HistoryKind.COMMAND_SENT]
    assert events(t1) == [LifecycleKind.STEP_COMPLETED]
    assert t1.events[0].step == "reserve_inventory"
    assert t1.commands == (
        OutgoingCommand(
            service="payment",
            step="charge_payment",
            message_type="payment.charge_payment",
            command_id=fwd("charge_payment"),
            attempt=1,
            payload={
                "order_id": "o-1",
                "customer_id": "c-1",
                "amount_cents": 1500,
                "currency": "EUR",
            },
            purpose=CommandPurpose.FORWARD,
        ),
    )
    inst = t1.instance
    assert inst.data["reservation_id"] == "r-1"
    assert inst.completed_steps == ("reserve_inventory",)
    assert inst.updated_at == later
    assert inst.deadline_at == later + timedelta(seconds=30)

    t2 = step_apply(inst, answer(inst))
    assert t2.commands == (
        OutgoingCommand(
            service="shipping",
            step="schedule_shipping",
            message_type="shipping.schedule_shipment",
            command_id=fwd("schedule_shipping"),
            attempt=1,
            payload={"order_id": "o-1", "customer_id": "c-1", "items": ITEMS},
            purpose=CommandPurpose.FORWARD,
        ),
    )
    inst = t2.instance
    assert inst.data["charge_id"] == "ch-1"

    t3 = step_apply(inst, answer(inst))
    assert t3.commands == ()
    assert kinds(t3) == [HistoryKind.STEP_SUCCEEDED, HistoryKind.COMPLETED]
    assert events(t3) == [LifecycleKind.STEP_COMPLETED, LifecycleKind.COMPLETED]
    done = t3.instance
    assert done.status is SagaStatus.COMPLETED
    assert done.is_terminal
    assert done.completed_steps == STEPS
    assert (done.current_step, done.command_id, done.deadline_at) == (None, None, None)
    assert done.data["shipment_id"] == "sh-1"
    assert done.failure_reason is None


def test_reply_to_an_earlier_attempt_of_the_awaited_command_is_accepted() -> None:
    inst = start().instance
    inst = step_apply(inst, deadline(inst)).instance
    assert inst.attempt == 2

    t = step_apply(inst, answer(inst, attempt=1))
    assert t.changed
    assert t.instance.completed_steps == ("reserve_inventory",)


def test_failure_at_first_step_has_nothing_to_compensate() -> None:
    inst = start().instance
    t = step_apply(inst, answer(inst, Outcome.FAILURE, error="out of stock"))

    assert t.instance.status is SagaStatus.COMPENSATED
    assert t.instance.failure_reason == "reserve_inventory: out of stock"
    assert t.commands == ()
    assert kinds(t) == [HistoryKind.STEP_FAILED, HistoryKind.COMPENSATED]
    assert t.history[0].detail["error"] == "out of stock"
    assert events(t) == [LifecycleKind.COMPENSATED]
    assert (t.instance.current_step, t.instance.command_id, t.instance.deadline_at) == (
        None,
        None,
        None,
    )


def test_failure_at_charge_releases_stock_only() -> None:
    inst = awaiting("charge_payment")
    t = step_apply(inst, answer(inst, Outcome.FAILURE, error="card declined"))

    assert t.instance.status is SagaStatus.COMPENSATING
    assert t.instance.failure_reason == "charge_payment: card declined"
    assert kinds(t) == [HistoryKind.STEP_FAILED, HistoryKind.COMPENSATION_SENT]
    assert events(t) == [LifecycleKind.COMPENSATING]
    assert t.commands == (
        OutgoingCommand(
            service="inventory",
            step="reserve_inventory",
            message_type="inventory.release_stock",
            command_id=comp("reserve_inventory"),
            attempt=1,
            payload={"order_id": "o-1"},
            purpose=CommandPurpose.COMPENSATION,
        ),
    )
    inst = t.instance
    assert inst.current_step == "reserve_inventory"
    assert inst.command_id == comp("reserve_inventory")
    assert inst.deadline_at == NOW + timedelta(seconds=30)

    done = step_apply(inst, answer(inst, payload={}))
    assert done.instance.status is SagaStatus.COMPENSATED
    assert done.instance.compensated_steps == ("reserve_inventory",)
    assert kinds(done) == [HistoryKind.COMPENSATION_SUCCEEDED, HistoryKind.COMPENSATED]
    assert events(done) == [LifecycleKind.COMPENSATED]
    assert done.commands == ()
    assert done.instance.failure_reason == "charge_payment: card declined"


def test_failure_at_shipping_refunds_then_releases() -> None:
    inst = awaiting("schedule_shipping")
    t1 = step_apply(inst, answer(inst, Outcome.FAILURE, error="no courier"))
    assert [c.message_type for c in t1.commands] == ["payment.refund_payment"]
    assert t1.commands[0].command_id == comp("charge_payment")
    assert t1.commands[0].payload == {"order_id": "o-1", "amount_cents": 1500}
    assert t1.commands[0].service == "payment"

    t2 = step_apply(t1.instance, answer(t1.instance, payload={}))
    assert [c.message_type for c in t2.commands] == ["inventory.release_stock"]
    assert kinds(t2) == [HistoryKind.COMPENSATION_SUCCEEDED, HistoryKind.COMPENSATION_SENT]
    assert events(t2) == []

    t3 = step_apply(t2.instance, answer(t2.instance, payload={}))
    assert t3.instance.status is SagaStatus.COMPENSATED
    assert t3.instance.compensated_steps == ("charge_payment", "reserve_inventory")


def test_invalid_success_payload_fails_the_step() -> None:
    inst = awaiting("charge_payment")
    t = step_apply(inst, answer(inst, payload={"unexpected": True}))

    assert kinds(t)[0] is HistoryKind.STEP_FAILED
    assert t.instance.status is SagaStatus.COMPENSATING
    assert t.instance.completed_steps == ("reserve_inventory",)
    assert t.instance.failure_reason is not None
    assert t.instance.failure_reason.startswith("charge_payment: invalid reply: ")
    assert "charge_id" in t.instance.failure_reason
    assert t.commands[0].command_id == comp("reserve_inventory")


# --- duplicates and stale replies ----------------------------------------------------------


def test_same_reply_twice_advances_once() -> None:
    inst = start().instance
    reply = answer(inst)
    first = step_apply(inst, reply)
    second = step_apply(first.instance, replace(reply, message_id="m-again"))

    assert first.changed
    assert not second.changed
    assert second.instance is first.instance
    assert second.commands == ()
    assert second.events == ()
    assert kinds(second) == [HistoryKind.DUPLICATE_REPLY]
    assert second.history[0].step == "reserve_inventory"
    assert second.history[0].message_id == "m-again"


def test_duplicate_compensation_reply_changes_nothing() -> None:
    inst = compensating_after_failure_at("schedule_shipping")
    reply = answer(inst, payload={})
    after = step_apply(inst, reply).instance
    again = step_apply(after, reply)
    assert not again.changed
    assert kinds(again) == [HistoryKind.DUPLICATE_REPLY]


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"command_id": "not-the-command"}, id="wrong-command-id"),
        pytest.param({"step": "charge_payment"}, id="wrong-step"),
        pytest.param(
            {"step": "schedule_shipping", "command_id": fwd("schedule_shipping")},
            id="future-step",
        ),
        pytest.param({"attempt": 2}, id="attempt-never-sent"),
        pytest.param({"step": None}, id="no-step"),
        pytest.param({"command_id": comp("reserve_inventory")}, id="compensation-id"),
    ],
)
def test_stale_reply_changes_nothing(changes: dict[str, Any]) -> None:
    inst = start().instance
    reply = replace(answer(inst), **changes)
    t = step_apply(inst, reply, NOW + timedelta(seconds=1))

    assert not t.changed
    assert t.instance is inst
    assert t.commands == ()
    assert t.events == ()
    assert kinds(t) == [HistoryKind.STALE_REPLY]


def test_replies_to_a_completed_saga_are_duplicates_or_stale() -> None:
    inst = start().instance
    first = answer(inst)
    while inst.status is SagaStatus.RUNNING:
        inst = step_apply(inst, answer(inst)).instance

    assert kinds(step_apply(inst, first)) == [HistoryKind.DUPLICATE_REPLY]
    odd = replace(first, command_id=comp("reserve_inventory"))
    t = step_apply(inst, odd)
    assert kinds(t) == [HistoryKind.STALE_REPLY]
    assert not t.changed


def test_start_request_for_an_existing_saga_changes_nothing() -> None:
    inst = start().instance
    t = step_apply(inst, StartSaga("m-start-again", DATA))
    assert not t.changed
    assert t.instance is inst
    assert t.commands == ()
    assert kinds(t) == [HistoryKind.DUPLICATE_START]


# --- retryable replies -------------------------------------------------------------------


def test_retryable_reply_resends_with_next_attempt() -> None:
    inst = awaiting("charge_payment")
    t = step_apply(inst, answer(inst, Outcome.RETRYABLE, error="busy"))

    assert kinds(t) == [HistoryKind.STEP_RETRYABLE_FAILURE, HistoryKind.COMMAND_SENT]
    (command,) = t.commands
    assert command.command_id == fwd("charge_payment")
    assert command.attempt == 2
    assert command.purpose is CommandPurpose.RETRY
    assert t.instance.attempt == 2
    backoff = RetryPolicy(max_attempts=3).backoff(1, 0.5)
    assert t.instance.deadline_at == NOW + backoff + timedelta(seconds=30)
    assert t.instance.status is SagaStatus.RUNNING


def test_retryable_reply_without_attempts_left_fails_the_step() -> None:
    inst = awaiting("charge_payment")
    for _ in range(2):
        inst = step_apply(inst, answer(inst, Outcome.RETRYABLE, error="busy")).instance
    assert inst.attempt == 3

    t = step_apply(inst, answer(inst, Outcome.RETRYABLE, error="busy"))
    assert kinds(t) == [
        HistoryKind.STEP_RETRYABLE_FAILURE,
        HistoryKind.STEP_FAILED,
        HistoryKind.COMPENSATION_SENT,
    ]
    assert t.instance.status is SagaStatus.COMPENSATING
    assert t.instance.failure_reason == "charge_payment: busy (still failing after 3 attempts)"


def test_retryable_reply_to_an_older_attempt_is_superseded() -> None:
    inst = awaiting("charge_payment")
    inst = step_apply(inst, deadline(inst)).instance
    t = step_apply(inst, answer(inst, Outcome.RETRYABLE, attempt=1))

    assert not t.changed
    assert t.commands == ()
    assert kinds(t) == [HistoryKind.STEP_RETRYABLE_FAILURE]
    assert t.history[0].detail["superseded"] is True


# --- deadlines -----------------------------------------------------------------------------


@pytest.mark.parametrize("random_unit", [0.0, 0.5, 0.999])
def test_deadline_with_attempts_left_resends_the_same_command(random_unit: float) -> None:
    inst = awaiting("charge_payment")
    later = NOW + timedelta(seconds=31)
    t = step_apply(inst, deadline(inst, random_unit), later)

    assert kinds(t) == [HistoryKind.DEADLINE_MISSED, HistoryKind.COMMAND_SENT]
    (command,) = t.commands
    assert command.command_id == inst.command_id == fwd("charge_payment")
    assert command.attempt == 2
    assert command.purpose is CommandPurpose.RETRY
    assert command.payload["order_id"] == "o-1"
    backoff = RetryPolicy(max_attempts=3).backoff(1, random_unit)
    assert t.instance.deadline_at == later + backoff + timedelta(seconds=30)
    assert t.instance.attempt == 2
    assert t.instance.updated_at == later


def test_deadline_with_attempts_exhausted_fails_the_step_and_compensates() -> None:
    inst = awaiting("charge_payment")
    for _ in range(2):
        inst = step_apply(inst, deadline(inst)).instance
    t = step_apply(inst, deadline(inst))

    assert t.instance.status is SagaStatus.COMPENSATING
    assert t.instance.failure_reason == "charge_payment: no reply after 3 attempts"
    assert kinds(t) == [
        HistoryKind.DEADLINE_MISSED,
        HistoryKind.STEP_FAILED,
        HistoryKind.COMPENSATION_SENT,
    ]
    assert [c.command_id for c in t.commands] == [comp("reserve_inventory")]


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"attempt": 2}, id="wrong-attempt"),
        pytest.param({"command_id": "other"}, id="wrong-command-id"),
        pytest.param({"step": "charge_payment"}, id="wrong-step"),
    ],
)
def test_deadline_that_does_not_match_is_stale(changes: dict[str, Any]) -> None:
    inst = start().instance
    t = step_apply(inst, replace(deadline(inst), **changes))
    assert not t.changed
    assert t.instance is inst
    assert kinds(t) == [HistoryKind.STALE_DEADLINE]


def test_deadline_on_a_failed_saga_is_stale() -> None:
    inst = failed_saga()
    assert inst.current_step is not None
    assert inst.command_id is not None
    t = step_apply(inst, DeadlineFired(inst.current_step, inst.command_id, inst.attempt))
    assert not t.changed
    assert kinds(t) == [HistoryKind.STALE_DEADLINE]


def test_compensation_deadline_resends_then_fails_the_saga() -> None:
    inst = compensating_after_failure_at("charge_payment")
    t = step_apply(inst, deadline(inst))
    assert kinds(t) == [HistoryKind.DEADLINE_MISSED, HistoryKind.COMPENSATION_SENT]
    assert t.commands[0].command_id == comp("reserve_inventory")
    assert t.commands[0].attempt == 2
    assert t.commands[0].purpose is CommandPurpose.RETRY
    inst = t.instance
    for _ in range(3):
        inst = step_apply(inst, deadline(inst)).instance
    assert inst.attempt == 5

    t = step_apply(inst, deadline(inst))
    assert t.instance.status is SagaStatus.FAILED
    assert t.instance.failure_reason == (
        "compensation of reserve_inventory failed: no reply after 5 attempts"
    )


# --- compensation failures ---------------------------------------------------------------


def test_compensation_failure_fails_the_saga() -> None:
    inst = compensating_after_failure_at("schedule_shipping")
    t = step_apply(inst, answer(inst, Outcome.FAILURE, error="bank down"))

    failed = t.instance
    assert failed.status is SagaStatus.FAILED
    assert failed.failure_reason == "compensation of charge_payment failed: bank down"
    assert failed.current_step == "charge_payment"
    assert failed.command_id == comp("charge_payment")
    assert failed.deadline_at is None
    assert kinds(t) == [HistoryKind.COMPENSATION_FAILED, HistoryKind.FAILED]
    assert events(t) == [LifecycleKind.FAILED]
    assert t.commands == ()


def test_compensation_retryable_resends_until_attempts_run_out() -> None:
    inst = compensating_after_failure_at("charge_payment")
    t = step_apply(inst, answer(inst, Outcome.RETRYABLE, error="locked"))
    assert kinds(t) == [HistoryKind.STEP_RETRYABLE_FAILURE, HistoryKind.COMPENSATION_SENT]
    assert t.commands[0].attempt == 2
    assert t.commands[0].command_id == comp("reserve_inventory")
    assert t.instance.status is SagaStatus.COMPENSATING
    inst = t.instance
    while inst.attempt < 5:
        inst = step_apply(inst, answer(inst, Outcome.RETRYABLE, error="locked")).instance

    t = step_apply(inst, answer(inst, Outcome.RETRYABLE, error="locked"))
    assert t.instance.status is SagaStatus.FAILED
    assert t.commands == ()


def test_operator_retry_resumes_a_failed_saga_to_compensated() -> None:
    inst = failed_saga()
    later = NOW + timedelta(hours=1)
    t = step_apply(inst, OperatorRetry("alice", "bank is back"), later)

    assert t.instance.status is SagaStatus.COMPENSATING
    assert kinds(t) == [HistoryKind.OPERATOR_ACTION, HistoryKind.COMPENSATION_SENT]
    assert t.history[0].detail == {"actor": "alice", "action": "retry", "reason": "bank is back"}
    assert events(t) == [LifecycleKind.COMPENSATING]
    (command,) = t.commands
    # A new epoch, so a new id: the bank answers the old one from its record of the refusal.
    assert t.instance.epoch == inst.epoch + 1 == 1
    assert command.command_id == comp("charge_payment", epoch=1) != inst.command_id
    assert t.instance.command_id == command.command_id
    assert command.attempt == 1
    assert command.purpose is CommandPurpose.RETRY
    assert t.instance.deadline_at == later + timedelta(seconds=30)

    inst = step_apply(t.instance, answer(t.instance, payload={})).instance
    assert inst.current_step == "reserve_inventory"
    assert inst.command_id == comp("reserve_inventory", epoch=1)
    inst = step_apply(inst, answer(inst, payload={})).instance
    assert inst.status is SagaStatus.COMPENSATED
    assert inst.compensated_steps == ("charge_payment", "reserve_inventory")


def test_late_success_of_the_compensation_a_failed_saga_gave_up_on_resumes_it() -> None:
    inst = compensating_after_failure_at("schedule_shipping")
    for _ in range(5):
        inst = step_apply(inst, deadline(inst)).instance
    assert inst.status is SagaStatus.FAILED

    t = step_apply(inst, answer(inst, payload={}))
    assert kinds(t)[:2] == [HistoryKind.LATE_REPLY, HistoryKind.COMPENSATION_SUCCEEDED]
    assert t.instance.status is SagaStatus.COMPENSATING
    assert events(t) == [LifecycleKind.COMPENSATING]
    assert t.commands[0].command_id == comp("reserve_inventory")


def test_failure_reply_to_the_compensation_a_failed_saga_gave_up_on_is_recorded() -> None:
    inst = failed_saga()
    t = step_apply(inst, answer(inst, Outcome.FAILURE, error="still down"))
    assert not t.changed
    assert kinds(t) == [HistoryKind.LATE_REPLY]


# --- operators ---------------------------------------------------------------------------


def test_operator_abort_of_a_running_saga_compensates() -> None:
    inst = awaiting("schedule_shipping")
    t = step_apply(inst, OperatorAbort("bob", "customer cancelled"))

    assert t.instance.status is SagaStatus.COMPENSATING
    assert t.instance.failure_reason == "aborted by bob: customer cancelled"
    assert kinds(t) == [HistoryKind.OPERATOR_ACTION, HistoryKind.COMPENSATION_SENT]
    assert t.history[0].step == "schedule_shipping"
    assert t.history[0].detail["action"] == "abort"
    assert t.history[0].detail["actor"] == "bob"
    assert [c.command_id for c in t.commands] == [comp("charge_payment")]


def test_operator_abort_at_the_first_step_is_compensated_at_once() -> None:
    t = step_apply(start().instance, OperatorAbort("bob", "test order"))
    assert t.instance.status is SagaStatus.COMPENSATED
    assert t.commands == ()
    assert events(t) == [LifecycleKind.COMPENSATED]


def test_operator_abort_while_compensating_changes_nothing() -> None:
    inst = compensating_after_failure_at("charge_payment")
    t = step_apply(inst, OperatorAbort("bob", "again"))
    assert not t.changed
    assert t.instance is inst
    assert kinds(t) == [HistoryKind.OPERATOR_ACTION]
    assert t.history[0].detail["ignored"] is True


def _completed() -> SagaInstance:
    inst = start().instance
    while inst.status is SagaStatus.RUNNING:
        inst = step_apply(inst, answer(inst)).instance
    return inst


def _compensated() -> SagaInstance:
    inst = start().instance
    return step_apply(inst, answer(inst, Outcome.FAILURE)).instance


@pytest.mark.parametrize("make", [_completed, _compensated, failed_saga])
def test_operator_abort_of_a_terminal_saga_raises(make: Any) -> None:
    inst = make()
    with pytest.raises(InvalidOperatorActionError) as info:
        step_apply(inst, OperatorAbort("bob", "why not"))
    assert info.value.saga_id == SAGA_ID


@pytest.mark.parametrize("make", [_completed, _compensated])
def test_operator_retry_of_a_finished_saga_raises(make: Any) -> None:
    with pytest.raises(InvalidOperatorActionError) as info:
        step_apply(make(), OperatorRetry("alice", "please"))
    assert info.value.saga_id == SAGA_ID


@pytest.mark.parametrize(
    ("make", "compensation"),
    [
        (lambda: awaiting("charge_payment"), False),
        (lambda: compensating_after_failure_at("charge_payment"), True),
    ],
)
def test_operator_retry_of_an_active_saga_resends_the_awaited_command(
    make: Any, compensation: bool
) -> None:
    inst = make()
    t = step_apply(inst, OperatorRetry("alice", "nudge"))
    assert kinds(t) == [
        HistoryKind.OPERATOR_ACTION,
        HistoryKind.COMPENSATION_SENT if compensation else HistoryKind.COMMAND_SENT,
    ]
    (command,) = t.commands
    assert command.command_id == inst.command_id
    assert command.attempt == inst.attempt + 1
    assert command.purpose is CommandPurpose.RETRY
    assert t.instance.status is inst.status
    assert t.instance.attempt == inst.attempt + 1


def test_operator_retry_of_an_active_saga_keeps_the_epoch() -> None:
    inst = awaiting("charge_payment")
    t = step_apply(inst, OperatorRetry("alice", "nudge"))
    assert t.instance.epoch == inst.epoch == 0
    assert t.instance.command_id == fwd("charge_payment")


def test_every_operator_retry_of_a_failed_saga_sends_under_a_new_id() -> None:
    failed = failed_saga()
    first = step_apply(failed, OperatorRetry("alice", "bank is back"))
    assert first.instance.epoch == 1
    refused = step_apply(first.instance, answer(first.instance, Outcome.FAILURE, error="still"))
    assert refused.instance.status is SagaStatus.FAILED
    assert refused.instance.command_id == comp("charge_payment", 1)

    second = step_apply(refused.instance, OperatorRetry("alice", "really back now"))
    assert second.instance.epoch == 2
    assert [c.command_id for c in second.commands] == [comp("charge_payment", 2)]
    assert len({failed.command_id, first.instance.command_id, second.instance.command_id}) == 3


def test_refusal_replayed_under_the_old_id_after_a_retry_changes_nothing() -> None:
    failed = failed_saga()
    resumed = step_apply(failed, OperatorRetry("alice", "bank is back")).instance
    replayed = answer(
        resumed, Outcome.FAILURE, command_id=failed.command_id, attempt=1, error="bank down"
    )
    t = step_apply(resumed, replayed)
    assert not t.changed
    assert t.commands == ()
    assert kinds(t) == [HistoryKind.STALE_REPLY]


def test_replies_from_every_epoch_are_recognised() -> None:
    # Aborted while charging; the release is refused, then retried by an operator (epoch 1).
    inst = awaiting("charge_payment")
    inst = step_apply(inst, OperatorAbort("bob", "stop")).instance
    inst = step_apply(inst, answer(inst, Outcome.FAILURE, error="warehouse offline")).instance
    inst = step_apply(inst, OperatorRetry("alice", "warehouse back")).instance
    assert inst.epoch == 1
    assert inst.command_id == comp("reserve_inventory", 1)

    # The charge sent at epoch 0 succeeds late: it is refunded, under the current epoch's id.
    late = answer(inst, step="charge_payment", command_id=fwd("charge_payment"), attempt=1)
    t = step_apply(inst, late)
    assert kinds(t) == [HistoryKind.LATE_REPLY, HistoryKind.COMPENSATION_SENT]
    assert [c.command_id for c in t.commands] == [comp("charge_payment", 1)]
    inst = t.instance

    # The release under the new id completes the saga; its repeat is a duplicate.
    release = answer(inst, payload={}, message_id="m-release")
    done = step_apply(inst, release).instance
    assert done.status is SagaStatus.COMPENSATED
    again = step_apply(done, replace(release, message_id="m-release-2"))
    assert not again.changed
    assert kinds(again) == [HistoryKind.DUPLICATE_REPLY]

    # The late refund's reply, under the epoch-1 id, is matched too.
    refund = ReplyReceived(
        "m-refund", "charge_payment", comp("charge_payment", 1), 1, Outcome.SUCCESS, {}
    )
    t = step_apply(done, refund)
    assert kinds(t) == [HistoryKind.LATE_REPLY]
    assert t.history[0].detail["outcome"] == "success"


# --- late success ------------------------------------------------------------------------


def test_late_success_after_timeout_sends_the_compensation() -> None:
    inst = awaiting("charge_payment")
    for _ in range(3):
        inst = step_apply(inst, deadline(inst)).instance
    assert inst.status is SagaStatus.COMPENSATING
    assert inst.current_step == "reserve_inventory"

    late = answer(inst, step="charge_payment", command_id=fwd("charge_payment"), attempt=2)
    t = step_apply(inst, late)
    assert kinds(t) == [HistoryKind.LATE_REPLY, HistoryKind.COMPENSATION_SENT]
    assert t.commands == (
        OutgoingCommand(
            service="payment",
            step="charge_payment",
            message_type="payment.refund_payment",
            command_id=comp("charge_payment"),
            attempt=1,
            payload={"order_id": "o-1", "amount_cents": 1500},
            purpose=CommandPurpose.COMPENSATION,
        ),
    )
    # Still awaiting the release: the refund is fire-and-forget.
    assert t.instance.current_step == "reserve_inventory"
    assert t.instance.command_id == inst.command_id
    assert t.instance.deadline_at == inst.deadline_at
    assert t.instance.data["charge_id"] == "ch-1"
    assert t.events == ()


def test_late_success_after_compensated_sends_the_compensation() -> None:
    inst = awaiting("charge_payment")
    inst = step_apply(inst, OperatorAbort("bob", "stop")).instance
    inst = step_apply(inst, answer(inst, payload={})).instance
    assert inst.status is SagaStatus.COMPENSATED

    late = answer(inst, step="charge_payment", command_id=fwd("charge_payment"), attempt=1)
    t = step_apply(inst, late)
    assert [c.command_id for c in t.commands] == [comp("charge_payment")]
    assert t.instance.status is SagaStatus.COMPENSATED
    assert kinds(t) == [HistoryKind.LATE_REPLY, HistoryKind.COMPENSATION_SENT]

    again = step_apply(t.instance, replace(late, message_id="m-2"))
    assert not again.changed
    assert [c.command_id for c in again.commands] == [comp("charge_payment")]


def test_late_success_of_a_step_without_compensation_is_only_recorded() -> None:
    inst = awaiting("schedule_shipping")
    inst = step_apply(inst, OperatorAbort("bob", "stop")).instance
    late = answer(inst, step="schedule_shipping", command_id=fwd("schedule_shipping"), attempt=1)
    t = step_apply(inst, late)

    assert not t.changed
    assert t.commands == ()
    assert kinds(t) == [HistoryKind.LATE_REPLY]
    assert t.history[0].detail["compensate"] is False


def test_late_failure_of_the_abandoned_step_is_only_recorded() -> None:
    inst = awaiting("charge_payment")
    inst = step_apply(inst, OperatorAbort("bob", "stop")).instance
    late = answer(
        inst, Outcome.FAILURE, step="charge_payment", command_id=fwd("charge_payment"), attempt=1
    )
    t = step_apply(inst, late)
    assert not t.changed
    assert t.commands == ()
    assert kinds(t) == [HistoryKind.LATE_REPLY]


def _late_refund_sent() -> SagaInstance:
    """COMPENSATED, after which a late charge success made the engine send a refund."""
    inst = awaiting("charge_payment")
    inst = step_apply(inst, OperatorAbort("bob", "stop")).instance
    inst = step_apply(inst, answer(inst, payload={})).instance
    late = answer(inst, step="charge_payment", command_id=fwd("charge_payment"), attempt=1)
    return step_apply(inst, late).instance


def _refund_reply(outcome: Outcome, attempt: int = 1) -> ReplyReceived:
    return ReplyReceived(
        "m-refund", "charge_payment", comp("charge_payment"), attempt, outcome, {}, "nope"
    )


def test_late_compensation_success_is_recorded() -> None:
    inst = _late_refund_sent()
    t = step_apply(inst, _refund_reply(Outcome.SUCCESS))
    assert not t.changed
    assert kinds(t) == [HistoryKind.LATE_REPLY]


def test_late_compensation_retryable_is_resent() -> None:
    inst = _late_refund_sent()
    t = step_apply(inst, _refund_reply(Outcome.RETRYABLE, attempt=1))
    assert not t.changed
    assert [(c.command_id, c.attempt, c.purpose) for c in t.commands] == [
        (comp("charge_payment"), 2, CommandPurpose.RETRY)
    ]


def test_late_compensation_failure_fails_the_saga_and_an_operator_can_resume() -> None:
    inst = _late_refund_sent()
    t = step_apply(inst, _refund_reply(Outcome.FAILURE))

    failed = t.instance
    assert failed.status is SagaStatus.FAILED
    assert failed.current_step == "charge_payment"
    assert failed.command_id == comp("charge_payment")
    assert failed.failure_reason == "compensation of charge_payment failed: nope"
    assert events(t) == [LifecycleKind.FAILED]

    resumed = step_apply(failed, OperatorRetry("alice", "refund by hand done")).instance
    assert resumed.status is SagaStatus.COMPENSATING
    assert resumed.command_id == comp("charge_payment", epoch=1)
    success = replace(_refund_reply(Outcome.SUCCESS), command_id=resumed.command_id)
    done = step_apply(resumed, success).instance
    assert done.status is SagaStatus.COMPENSATED
    assert done.compensated_steps == ("reserve_inventory", "charge_payment")


def test_late_compensation_failure_while_failed_is_only_recorded() -> None:
    inst = awaiting("charge_payment")
    for _ in range(3):
        inst = step_apply(inst, deadline(inst)).instance
    late = answer(inst, step="charge_payment", command_id=fwd("charge_payment"), attempt=1)
    inst = step_apply(inst, late).instance
    inst = step_apply(inst, answer(inst, Outcome.FAILURE, error="release refused")).instance
    assert inst.status is SagaStatus.FAILED
    assert inst.current_step == "reserve_inventory"

    t = step_apply(inst, _refund_reply(Outcome.FAILURE))
    assert not t.changed
    assert kinds(t) == [HistoryKind.LATE_REPLY, HistoryKind.COMPENSATION_FAILED]


# --- purity ------------------------------------------------------------------------------


def test_inputs_are_never_mutated() -> None:
    inst = awaiting("charge_payment")
    reply = answer(inst)
    before = (copy.deepcopy(inst), copy.deepcopy(reply))
    step_apply(inst, reply)
    assert (inst, reply) == before


# --- definitions the engine must reject ----------------------------------------------------


class _Data(BaseModel):
    value: int = 1


class _Ping(Command):
    message_type: ClassVar[str] = "test.ping"


class _Pong(Command):
    message_type: ClassVar[str] = "test.pong"


class _WrongBuild(SagaDefinition[_Data]):
    name = "wrong_build"
    data_model = _Data
    steps = (Step[_Data](name="ping", service="test", command=_Ping, build=lambda d: _Pong()),)


def _explode(data: _Data, reply: Mapping[str, Any]) -> _Data:
    raise RuntimeError("boom")


class _Exploding(SagaDefinition[_Data]):
    name = "exploding"
    data_model = _Data
    steps = (
        Step[_Data](name="one", service="test", command=_Ping, build=lambda d: _Ping()),
        Step[_Data](
            name="two",
            service="test",
            command=_Ping,
            build=lambda d: _Ping(),
            on_success=_explode,
            compensation=Compensation[_Data](_Pong, lambda d: _Pong()),
        ),
    )


def test_build_returning_the_wrong_command_raises() -> None:
    with pytest.raises(SagaDefinitionError) as info:
        start_saga(_WrongBuild, "s", StartSaga("m", {}), NOW)
    assert info.value.step == "ping"


def test_on_success_raising_is_a_step_failure() -> None:
    inst = start_saga(_Exploding, "s", StartSaga("m", {}), NOW).instance
    ok = ReplyReceived("m1", "one", inst.command_id, 1, Outcome.SUCCESS)
    inst = apply(_Exploding, inst, ok, NOW).instance
    bad = ReplyReceived("m2", "two", inst.command_id, 1, Outcome.SUCCESS)
    t = apply(_Exploding, inst, bad, NOW)
    # "one" has no compensation, so nothing to undo.
    assert t.instance.status is SagaStatus.COMPENSATED
    assert t.instance.failure_reason == "two: invalid reply: boom"


# --- properties --------------------------------------------------------------------------

OUTCOMES = st.sampled_from(list(Outcome))
ACTIONS = st.one_of(
    st.tuples(st.just("awaited"), OUTCOMES, st.integers(0, 1)),
    st.tuples(st.just("forward"), st.integers(0, 2), OUTCOMES, st.integers(1, 3)),
    st.tuples(st.just("compensation"), st.integers(0, 2), OUTCOMES, st.integers(1, 5)),
    st.tuples(st.just("deadline"), st.booleans(), st.floats(0, 0.999)),
    st.tuples(st.just("abort")),
    st.tuples(st.just("retry")),
)


def _to_input(
    inst: SagaInstance, action: tuple[Any, ...], index: int, compensations_sent: set[str]
) -> SagaInput:
    """The input an action stands for.

    A participant only answers commands it received, so compensation replies name a step
    whose compensation was sent; for any other step they carry an unknown command id.
    """
    kind = action[0]
    mid = f"m-{index}"
    if kind == "awaited" and inst.current_step is not None:
        outcome, older = action[1], action[2]
        attempt = max(inst.attempt - older, 1)
        return answer(inst, outcome, attempt=attempt, message_id=mid)
    if kind in ("forward", "compensation"):
        name = STEPS[action[1]]
        is_comp = kind == "compensation"
        payload = SUCCESS_PAYLOADS[name] if not is_comp and action[2] is Outcome.SUCCESS else {}
        # Compensation replies carry the current epoch's id or, half the time, the first one's.
        epoch = inst.epoch if is_comp and index % 2 else 0
        cid = command_id_for(SAGA_ID, name, compensation=is_comp, epoch=epoch)
        if is_comp and name not in compensations_sent:
            cid = "unknown-command"
        return ReplyReceived(mid, name, cid, action[3], action[2], payload, "e")
    if kind == "deadline" and inst.current_step is not None and inst.command_id is not None:
        attempt = inst.attempt if action[1] else inst.attempt + 1
        return DeadlineFired(inst.current_step, inst.command_id, attempt, action[2])
    if kind == "abort":
        return OperatorAbort("op", "prop")
    return OperatorRetry("op", "prop")


@settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(st.lists(ACTIONS, max_size=25))
def test_engine_invariants_hold_for_any_input_sequence(actions: list[tuple[Any, ...]]) -> None:
    inst = start().instance
    late_succeeded: set[str] = set()
    compensations_sent: set[str] = set()
    now = NOW
    for index, action in enumerate(actions):
        now += timedelta(seconds=1)
        event = _to_input(inst, action, index, compensations_sent)
        if (
            isinstance(event, ReplyReceived)
            and event.outcome is Outcome.SUCCESS
            and event.step is not None
            and event.command_id == fwd(event.step)
        ):
            late_succeeded.add(event.step)
        try:
            t = step_apply(inst, event, now)
        except InvalidOperatorActionError:
            if isinstance(event, OperatorAbort):
                assert inst.is_terminal
            else:
                assert inst.status in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED)
            continue
        after = t.instance

        assert t.history, "every transition records something"
        assert t.changed == (after is not inst)
        if not t.changed:
            assert after == inst
            assert t.events == ()
        else:
            assert after.updated_at == now
        # The epoch moves only when an operator retries a FAILED saga, by one.
        bumped = isinstance(event, OperatorRetry) and inst.status is SagaStatus.FAILED
        assert after.epoch == inst.epoch + (1 if bumped else 0)
        for command in t.commands:
            comp_ids = {comp(command.step, epoch) for epoch in range(after.epoch + 1)}
            if command.purpose is CommandPurpose.COMPENSATION or command.command_id in comp_ids:
                assert command.step in after.completed_steps or command.step in late_succeeded
                compensations_sent.add(command.step)
            else:
                assert after.status is SagaStatus.RUNNING
                assert command.step == after.current_step
        # Forward steps complete in order; undone steps were done.
        assert after.completed_steps == STEPS[: len(after.completed_steps)]
        assert set(after.compensated_steps) <= set(after.completed_steps) | late_succeeded
        assert len(set(after.compensated_steps)) == len(after.compensated_steps)
        # Terminal states are absorbing, with the documented exceptions.
        if inst.status is SagaStatus.COMPLETED:
            assert after.status is SagaStatus.COMPLETED
        if inst.status is SagaStatus.COMPENSATED:
            assert after.status in (SagaStatus.COMPENSATED, SagaStatus.FAILED)
        if inst.status is SagaStatus.FAILED and after.status is not SagaStatus.FAILED:
            resumed_by_reply = (
                isinstance(event, ReplyReceived)
                and event.outcome is Outcome.SUCCESS
                and event.command_id == inst.command_id
            )
            assert isinstance(event, OperatorRetry) or resumed_by_reply
        # What is awaited is consistent with the status.
        if after.status is SagaStatus.RUNNING:
            assert after.current_step == STEPS[len(after.completed_steps)]
            assert after.command_id == fwd(after.current_step)
            assert after.deadline_at is not None
        elif after.status is SagaStatus.COMPENSATING:
            assert after.current_step is not None
            assert after.command_id == comp(after.current_step, after.epoch)
            assert after.deadline_at is not None
        elif after.status is SagaStatus.FAILED:
            assert after.current_step is not None
            assert after.deadline_at is None
        else:
            assert (after.current_step, after.command_id, after.deadline_at) == (None, None, None)
        inst = after
