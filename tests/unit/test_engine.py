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
    AdmitSaga,
    CommandPickedUp,
    CommandPurpose,
    DeadlineFired,
    HistoryKind,
    LifecycleKind,
    LifecyclePublishing,
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
from service_sdk import FENCE_MESSAGE_TYPE, Command, Outcome
from service_sdk.contract import UNDELIVERABLE_KEY, undeliverable_payload, undeliverable_reason

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
        {**DATA, "amount_cents": 0, "unexpected": 1},
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


def test_invalid_success_payload_fails_the_step_and_undoes_it_first() -> None:
    inst = awaiting("charge_payment")
    t = step_apply(inst, answer(inst, payload={"unexpected": True}))

    assert kinds(t)[0] is HistoryKind.STEP_FAILED
    assert t.history[0].detail["in_doubt"] is True
    assert t.instance.status is SagaStatus.COMPENSATING
    assert t.instance.completed_steps == ("reserve_inventory",)
    assert t.instance.failure_reason is not None
    assert t.instance.failure_reason.startswith("charge_payment: invalid reply: ")
    assert "charge_id" in t.instance.failure_reason
    # The charge happened; only its reply is unusable: it is refunded before the release.
    (refund,) = t.commands
    assert refund.command_id == comp("charge_payment")
    assert refund.compensates == fwd("charge_payment")
    assert t.instance.in_doubt_step == "charge_payment"
    done = step_apply(t.instance, answer(t.instance, payload={})).instance
    assert done.current_step == "reserve_inventory"
    assert done.in_doubt_step is None
    done = step_apply(done, answer(done, payload={})).instance
    assert done.status is SagaStatus.COMPENSATED
    assert done.compensated_steps == ("charge_payment", "reserve_inventory")


def test_an_undeliverable_success_is_undone_with_the_steps_before_it() -> None:
    # schedule_shipping's model would fold the payload in; the marker wins over any model.
    inst = awaiting("charge_payment")
    marker = undeliverable_payload(
        "MessageSizeTooLargeError: 2 MB", size=2_000_000, dead_letter_id="d"
    )
    t = step_apply(inst, answer(inst, payload={**SUCCESS_PAYLOADS["charge_payment"], **marker}))

    failed = t.history[0]
    assert failed.kind is HistoryKind.STEP_FAILED
    assert failed.detail["in_doubt"] is True
    assert failed.detail["undeliverable"] == "MessageSizeTooLargeError: 2 MB"
    assert t.instance.failure_reason == (
        "charge_payment: reply undeliverable: MessageSizeTooLargeError: 2 MB"
    )
    assert t.instance.data.get("charge_id") is None  # not folded in
    (refund,) = t.commands
    assert (refund.command_id, refund.compensates) == (
        comp("charge_payment"),
        fwd("charge_payment"),
    )
    done = step_apply(t.instance, answer(t.instance, payload={})).instance
    done = step_apply(done, answer(done, payload={})).instance
    assert done.status is SagaStatus.COMPENSATED
    assert done.compensated_steps == ("charge_payment", "reserve_inventory")


def test_an_undeliverable_success_of_a_step_that_takes_any_payload_is_still_undone() -> None:
    inst = start_saga(_Exploding, "s", StartSaga("m", {}), NOW).instance
    # "one" folds nothing (no on_success): an empty payload would be a fine success.
    marker = undeliverable_payload("InvalidTopicError", size=None, dead_letter_id=None)
    t = apply(
        _Exploding,
        inst,
        ReplyReceived("m1", "one", inst.command_id, 1, Outcome.SUCCESS, marker),
        NOW,
    )
    assert t.instance.status is SagaStatus.COMPENSATING
    assert t.instance.in_doubt_step == "one"
    assert t.instance.failure_reason == "one: reply undeliverable: InvalidTopicError"


def test_an_undeliverable_failure_is_a_failure_and_says_why_in_history() -> None:
    inst = awaiting("charge_payment")
    marker = undeliverable_payload("too large", size=5, dead_letter_id="d")
    t = step_apply(inst, answer(inst, Outcome.FAILURE, payload=marker, error="declined"))
    assert t.history[0].kind is HistoryKind.STEP_FAILED
    assert t.history[0].detail["in_doubt"] is False
    assert t.history[0].detail["undeliverable"] == "too large"
    assert t.instance.failure_reason == "charge_payment: declined"


def test_a_real_payload_is_not_taken_for_the_marker() -> None:
    assert undeliverable_reason({"charge_id": "ch-1"}) is None
    assert undeliverable_reason({UNDELIVERABLE_KEY: "yes"}) == "undeliverable"
    assert undeliverable_reason(undeliverable_payload("x" * 900, size=1, dead_letter_id=None)) == (
        "x" * 500
    )


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
    ("changes", "reason"),
    [
        pytest.param({"command_id": "not-the-command"}, "other_command_id", id="wrong-command-id"),
        pytest.param({"step": "charge_payment"}, "other_step", id="wrong-step"),
        pytest.param(
            {"step": "schedule_shipping", "command_id": fwd("schedule_shipping")},
            "other_step",
            id="future-step",
        ),
        pytest.param({"attempt": 2}, "future_attempt", id="attempt-never-sent"),
        pytest.param({"step": None}, "missing_step", id="no-step"),
        pytest.param({"command_id": None}, "missing_command_id", id="no-command-id"),
        pytest.param({"step": "release_stock"}, "unknown_step", id="compensation-name-as-step"),
        pytest.param(
            {"command_id": comp("reserve_inventory")}, "other_command_id", id="compensation-id"
        ),
    ],
)
def test_stale_reply_changes_nothing(changes: dict[str, Any], reason: str) -> None:
    inst = start().instance
    reply = replace(answer(inst), **changes)
    t = step_apply(inst, reply, NOW + timedelta(seconds=1))

    assert not t.changed
    assert t.instance is inst
    assert t.commands == ()
    assert t.events == ()
    assert kinds(t) == [HistoryKind.STALE_REPLY]
    assert t.history[0].detail["reason"] == reason


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


def test_deadline_with_attempts_exhausted_fails_the_step_and_undoes_it_first() -> None:
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
    # The charge may still happen: its refund goes first and names the charge to refuse.
    (refund,) = t.commands
    assert refund.command_id == comp("charge_payment")
    assert refund.compensates == fwd("charge_payment")
    assert t.instance.in_doubt_step == "charge_payment"
    assert t.instance.in_doubt_command_id == fwd("charge_payment")

    # The participant never ran the charge: it fences it and the saga moves on.
    fenced = step_apply(t.instance, answer(t.instance, payload={"fenced": True}))
    assert kinds(fenced) == [HistoryKind.COMPENSATION_SUCCEEDED, HistoryKind.COMPENSATION_SENT]
    assert fenced.history[0].detail["fenced"] is True
    assert [c.command_id for c in fenced.commands] == [comp("reserve_inventory")]
    assert fenced.commands[0].compensates is None


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


# --- queueing: pickups, postponed deadlines, admission --------------------------------------


def test_a_deadline_of_a_command_waiting_at_a_live_participant_is_postponed() -> None:
    inst = awaiting("charge_payment")
    later = NOW + timedelta(seconds=31)
    t = step_apply(inst, replace(deadline(inst), participant_alive=True), later)

    assert kinds(t) == [HistoryKind.DEADLINE_POSTPONED]
    assert t.commands == ()
    assert t.instance.attempt == 1
    assert t.instance.status is SagaStatus.RUNNING
    assert t.instance.deadline_at == later + timedelta(seconds=30)


def test_the_timeout_runs_from_the_pickup() -> None:
    inst = awaiting("charge_payment")
    picked = NOW + timedelta(seconds=50)
    t = step_apply(inst, CommandPickedUp("charge_payment", inst.command_id or "", 1, picked))
    assert kinds(t) == [HistoryKind.COMMAND_PICKED_UP]
    assert t.instance.picked_up_at == picked
    assert t.instance.deadline_at == picked + timedelta(seconds=30)

    # Picked up and silent past its timeout: a real miss, even though the service is alive.
    missed = step_apply(t.instance, replace(deadline(t.instance), participant_alive=True))
    assert kinds(missed) == [HistoryKind.DEADLINE_MISSED, HistoryKind.COMMAND_SENT]
    assert missed.instance.attempt == 2
    assert missed.instance.picked_up_at is None, "a re-send waits for its own pickup"


@pytest.mark.parametrize(
    "changes",
    [{"command_id": "other"}, {"step": "reserve_inventory"}, {"attempt": 2}],
    ids=["other-command", "other-step", "unsent-attempt"],
)
def test_a_pickup_of_a_command_not_awaited_changes_and_records_nothing(
    changes: dict[str, Any],
) -> None:
    inst = awaiting("charge_payment")
    pickup = replace(CommandPickedUp("charge_payment", inst.command_id or "", 1, NOW), **changes)
    t = step_apply(inst, pickup)
    assert not t.changed
    assert t.history == ()


def test_a_second_pickup_of_the_same_command_changes_nothing() -> None:
    inst = awaiting("charge_payment")
    first = CommandPickedUp("charge_payment", inst.command_id or "", 1, NOW)
    inst = step_apply(inst, first).instance
    again = step_apply(inst, replace(first, at=NOW + timedelta(seconds=5)))
    assert not again.changed


def test_a_deadline_at_a_dead_participant_counts_as_a_miss() -> None:
    inst = awaiting("charge_payment")
    t = step_apply(inst, replace(deadline(inst), participant_alive=False))
    assert kinds(t) == [HistoryKind.DEADLINE_MISSED, HistoryKind.COMMAND_SENT]


def test_a_queued_saga_sends_nothing_until_admitted() -> None:
    queued = start_saga(OrderSaga, SAGA_ID, StartSaga("m", DATA), NOW, admit=False)
    assert queued.instance.status is SagaStatus.QUEUED
    assert queued.commands == ()
    assert queued.events == ()
    assert kinds(queued) == [HistoryKind.QUEUED]
    assert queued.instance.deadline_at is None

    admitted = step_apply(queued.instance, AdmitSaga())
    assert admitted.instance.status is SagaStatus.RUNNING
    assert [c.command_id for c in admitted.commands] == [fwd("reserve_inventory")]
    assert kinds(admitted) == [HistoryKind.STARTED, HistoryKind.COMMAND_SENT]
    assert events(admitted) == [LifecycleKind.STARTED]

    again = step_apply(admitted.instance, AdmitSaga())
    assert not again.changed
    assert again.commands == ()


# --- operators ---------------------------------------------------------------------------


def test_operator_abort_of_a_running_saga_fences_the_step_in_flight_first() -> None:
    inst = awaiting("schedule_shipping")
    t = step_apply(inst, OperatorAbort("bob", "customer cancelled"))

    assert t.instance.status is SagaStatus.COMPENSATING
    assert t.instance.failure_reason == "aborted by bob: customer cancelled"
    assert kinds(t) == [HistoryKind.OPERATOR_ACTION, HistoryKind.COMPENSATION_SENT]
    assert t.history[0].step == "schedule_shipping"
    assert t.history[0].detail["action"] == "abort"
    assert t.history[0].detail["actor"] == "bob"
    # Shipping has no compensation: a fence makes sure it never ships.
    assert t.commands == (
        OutgoingCommand(
            service="shipping",
            step="schedule_shipping",
            message_type=FENCE_MESSAGE_TYPE,
            command_id=comp("schedule_shipping"),
            attempt=1,
            payload={},
            purpose=CommandPurpose.FENCE,
            compensates=fwd("schedule_shipping"),
        ),
    )
    fenced = step_apply(t.instance, answer(t.instance, payload={"fenced": True}))
    assert [c.command_id for c in fenced.commands] == [comp("charge_payment")]
    assert fenced.instance.in_doubt_step is None


def test_operator_abort_at_the_first_step_undoes_the_command_in_flight() -> None:
    t = step_apply(start().instance, OperatorAbort("bob", "test order"))
    assert t.instance.status is SagaStatus.COMPENSATING
    assert [(c.command_id, c.compensates) for c in t.commands] == [
        (comp("reserve_inventory"), fwd("reserve_inventory"))
    ]
    done = step_apply(t.instance, answer(t.instance, payload={"fenced": True}))
    assert done.instance.status is SagaStatus.COMPENSATED
    assert events(done) == [LifecycleKind.COMPENSATED]


def test_operator_abort_of_a_queued_saga_is_compensated_at_once() -> None:
    queued = start_saga(OrderSaga, SAGA_ID, StartSaga("m", DATA), NOW, admit=False).instance
    t = step_apply(queued, OperatorAbort("bob", "test order"))
    assert t.instance.status is SagaStatus.COMPENSATED
    assert t.commands == ()


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
    # Aborted while charging; the refund of the charge in flight is refused, then retried by an
    # operator (epoch 1): it still names the epoch-0 charge it undoes.
    inst = awaiting("charge_payment")
    inst = step_apply(inst, OperatorAbort("bob", "stop")).instance
    inst = step_apply(inst, answer(inst, Outcome.FAILURE, error="bank offline")).instance
    assert inst.status is SagaStatus.FAILED
    t = step_apply(inst, OperatorRetry("alice", "bank back"))
    inst = t.instance
    assert inst.epoch == 1
    assert [(c.command_id, c.compensates) for c in t.commands] == [
        (comp("charge_payment", 1), fwd("charge_payment"))
    ]

    # The charge sent at epoch 0 succeeds late: the refund on its way undoes it.
    late = answer(inst, step="charge_payment", command_id=fwd("charge_payment"), attempt=1)
    t = step_apply(inst, late)
    assert kinds(t) == [HistoryKind.LATE_REPLY]
    assert t.commands == ()

    # The refund under the new id, then the release, compensate the saga; repeats are duplicates.
    refund = answer(inst, payload={}, message_id="m-refund")
    inst = step_apply(inst, refund).instance
    assert inst.command_id == comp("reserve_inventory", 1)
    release = answer(inst, payload={}, message_id="m-release")
    done = step_apply(inst, release).instance
    assert done.status is SagaStatus.COMPENSATED
    for repeat in (release, refund):
        again = step_apply(done, replace(repeat, message_id=f"{repeat.message_id}-2"))
        assert not again.changed
        assert kinds(again) == [HistoryKind.DUPLICATE_REPLY]


# --- late success ------------------------------------------------------------------------


def test_late_success_after_timeout_is_undone_by_the_compensation_already_sent() -> None:
    inst = awaiting("charge_payment")
    for _ in range(3):
        inst = step_apply(inst, deadline(inst)).instance
    assert inst.status is SagaStatus.COMPENSATING
    assert inst.current_step == "charge_payment"
    assert inst.in_doubt_step == "charge_payment"

    late = answer(inst, step="charge_payment", command_id=fwd("charge_payment"), attempt=2)
    t = step_apply(inst, late)
    assert kinds(t) == [HistoryKind.LATE_REPLY]
    assert t.history[0].detail["undone_by"] == "in_doubt"
    assert t.commands == ()
    assert not t.changed
    # The refund sent when the saga gave up is still awaited; it settles the charge.
    assert t.instance.command_id == comp("charge_payment")


def test_a_saga_is_compensated_only_after_the_step_in_flight_is_settled() -> None:
    inst = awaiting("charge_payment")
    inst = step_apply(inst, OperatorAbort("bob", "stop")).instance
    assert inst.status is SagaStatus.COMPENSATING
    # The release comes only after the refund of the charge in flight is answered.
    assert inst.command_id == comp("charge_payment")
    inst = step_apply(inst, answer(inst, payload={})).instance
    assert inst.command_id == comp("reserve_inventory")
    inst = step_apply(inst, answer(inst, payload={})).instance
    assert inst.status is SagaStatus.COMPENSATED

    late = answer(inst, step="charge_payment", command_id=fwd("charge_payment"), attempt=1)
    t = step_apply(inst, late)
    assert t.commands == ()
    assert t.instance.status is SagaStatus.COMPENSATED
    assert kinds(t) == [HistoryKind.DUPLICATE_REPLY] or kinds(t) == [HistoryKind.LATE_REPLY]


def test_a_fenced_step_that_ran_after_all_fails_the_saga_for_an_operator() -> None:
    inst = awaiting("schedule_shipping")
    inst = step_apply(inst, OperatorAbort("bob", "stop")).instance
    late = answer(inst, step="schedule_shipping", command_id=fwd("schedule_shipping"), attempt=1)
    t = step_apply(inst, late)
    assert not t.changed
    assert t.commands == ()
    assert kinds(t) == [HistoryKind.LATE_REPLY]

    # The participant had shipped before the fence arrived: that cannot be undone.
    shipped = answer(inst, payload={"fenced": False, "executed": "success"})
    t = step_apply(inst, shipped)
    assert t.instance.status is SagaStatus.FAILED
    assert t.instance.failure_reason is not None
    assert "schedule_shipping took effect" in t.instance.failure_reason
    assert events(t) == [LifecycleKind.FAILED]
    assert t.commands == ()


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


def _refund_in_doubt() -> SagaInstance:
    """COMPENSATING: the charge timed out for good and its refund (naming it) is awaited."""
    inst = awaiting("charge_payment")
    for _ in range(3):
        inst = step_apply(inst, deadline(inst)).instance
    return inst


def test_the_undo_of_a_step_in_doubt_is_retried_with_what_it_undoes() -> None:
    inst = _refund_in_doubt()
    t = step_apply(inst, answer(inst, Outcome.RETRYABLE, error="busy"))
    assert [(c.command_id, c.attempt, c.purpose, c.compensates) for c in t.commands] == [
        (comp("charge_payment"), 2, CommandPurpose.RETRY, fwd("charge_payment"))
    ]


def test_a_refused_undo_of_a_step_in_doubt_fails_and_an_operator_can_resume() -> None:
    inst = _refund_in_doubt()
    t = step_apply(inst, answer(inst, Outcome.FAILURE, error="nope"))

    failed = t.instance
    assert failed.status is SagaStatus.FAILED
    assert failed.current_step == "charge_payment"
    assert failed.command_id == comp("charge_payment")
    assert failed.failure_reason == "compensation of charge_payment failed: nope"
    assert failed.in_doubt_step == "charge_payment"
    assert events(t) == [LifecycleKind.FAILED]

    retried = step_apply(failed, OperatorRetry("alice", "refund by hand done"))
    resumed = retried.instance
    assert resumed.status is SagaStatus.COMPENSATING
    assert resumed.command_id == comp("charge_payment", epoch=1)
    assert retried.commands[0].compensates == fwd("charge_payment")
    done = step_apply(resumed, answer(resumed, payload={})).instance
    done = step_apply(done, answer(done, payload={})).instance
    assert done.status is SagaStatus.COMPENSATED
    assert done.compensated_steps == ("charge_payment", "reserve_inventory")


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
    assert t.instance.failure_reason == "two: invalid reply: boom"
    # "two" happened: it is compensated; "one" has no compensation, so nothing else to undo.
    assert t.instance.status is SagaStatus.COMPENSATING
    assert [c.step for c in t.commands] == ["two"]
    undone = apply(
        _Exploding, t.instance, replace(bad, message_id="m3", command_id=t.instance.command_id), NOW
    )
    assert undone.instance.status is SagaStatus.COMPENSATED


# --- properties --------------------------------------------------------------------------

OUTCOMES = st.sampled_from(list(Outcome))
ACTIONS = st.one_of(
    st.tuples(st.just("awaited"), OUTCOMES, st.integers(0, 1)),
    st.tuples(st.just("forward"), st.integers(0, 2), OUTCOMES, st.integers(1, 3)),
    st.tuples(st.just("compensation"), st.integers(0, 2), OUTCOMES, st.integers(1, 5)),
    st.tuples(st.just("deadline"), st.booleans(), st.floats(0, 0.999), st.booleans()),
    st.tuples(st.just("pickup"), st.booleans()),
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
        return DeadlineFired(
            inst.current_step, inst.command_id, attempt, action[2], participant_alive=action[3]
        )
    if kind == "pickup" and inst.current_step is not None and inst.command_id is not None:
        command_id = inst.command_id if action[1] else "unknown-command"
        return CommandPickedUp(inst.current_step, command_id, inst.attempt, NOW)
    if kind == "abort":
        return OperatorAbort("op", "prop")
    return OperatorRetry("op", "prop")


@settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(st.lists(ACTIONS, max_size=25))
def test_engine_invariants_hold_for_any_input_sequence(actions: list[tuple[Any, ...]]) -> None:
    inst = start().instance
    compensations_sent: set[str] = set()
    forward_sent: set[str] = {"reserve_inventory"}
    settled: set[str] = set()
    ever_in_doubt: set[str] = set()
    now = NOW
    for index, action in enumerate(actions):
        now += timedelta(seconds=1)
        event = _to_input(inst, action, index, compensations_sent)
        try:
            t = step_apply(inst, event, now)
        except InvalidOperatorActionError:
            if isinstance(event, OperatorAbort):
                assert inst.is_terminal
            else:
                assert inst.status in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED)
            continue
        after = t.instance

        assert t.history or isinstance(event, CommandPickedUp), "every transition is recorded"
        assert t.changed == (after is not inst)
        if not t.changed:
            assert after == inst
            assert t.events == ()
        else:
            assert after.updated_at == now
        # The epoch moves only when an operator retries a FAILED saga, by one.
        bumped = isinstance(event, OperatorRetry) and inst.status is SagaStatus.FAILED
        assert after.epoch == inst.epoch + (1 if bumped else 0)
        if after.in_doubt_step is not None:
            ever_in_doubt.add(after.in_doubt_step)
        for command in t.commands:
            comp_ids = {comp(command.step, epoch) for epoch in range(after.epoch + 1)}
            if command.purpose in (CommandPurpose.COMPENSATION, CommandPurpose.FENCE) or (
                command.command_id in comp_ids
            ):
                assert command.step in after.completed_steps or command.step in ever_in_doubt
                assert (command.compensates is not None) == (command.step == after.in_doubt_step)
                compensations_sent.add(command.step)
            else:
                assert after.status is SagaStatus.RUNNING
                assert command.step == after.current_step
                forward_sent.add(command.step)
        # A forward step is settled once its final answer was applied or its undo answered.
        for entry in t.history:
            if entry.step is None:
                continue
            if (
                entry.kind is HistoryKind.STEP_SUCCEEDED
                or (entry.kind is HistoryKind.STEP_FAILED and not entry.detail.get("in_doubt"))
                or (
                    entry.kind is HistoryKind.COMPENSATION_SUCCEEDED
                    and entry.detail.get("in_doubt")
                )
            ):
                settled.add(entry.step)
        # Terminal only when settled: no forward command it sent can still take effect.
        if after.status in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED):
            assert forward_sent <= settled, (forward_sent, settled)
            assert after.in_doubt_step is None
        # Forward steps complete in order; undone steps were done.
        assert after.completed_steps == STEPS[: len(after.completed_steps)]
        assert set(after.compensated_steps) <= set(after.completed_steps) | ever_in_doubt
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
            assert after.in_doubt_step is None
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


def test_a_deadline_of_a_command_still_in_the_outbox_is_postponed() -> None:
    # Kafka was unreachable: the command was never sent, so nobody can have answered it.
    inst = awaiting("charge_payment")
    later = NOW + timedelta(seconds=31)
    t = step_apply(inst, replace(deadline(inst), command_unsent=True), later)
    assert kinds(t) == [HistoryKind.DEADLINE_POSTPONED]
    assert t.history[0].detail["waiting_for"] == "send"
    assert t.commands == ()
    assert t.instance.attempt == 1


def test_lifecycle_publishing_outcomes_keeps_the_start_and_the_ends() -> None:
    outcomes = {k for k in LifecycleKind if LifecyclePublishing.OUTCOMES.includes(k)}
    assert outcomes == {
        LifecycleKind.STARTED,
        LifecycleKind.COMPLETED,
        LifecycleKind.COMPENSATED,
        LifecycleKind.FAILED,
    }
    assert all(LifecyclePublishing.ALL.includes(k) for k in LifecycleKind)
    assert not any(LifecyclePublishing.NONE.includes(k) for k in LifecycleKind)
