"""An operator moves a saga onto a newer definition version: only where the new version can
carry on from where the saga stands, its data upcast explicitly."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from coordinator.core.errors import InvalidOperatorActionError, UnknownSagaVersionError
from coordinator.core.machine import apply, start_saga
from coordinator.core.migration import migrate_saga, upcasters
from coordinator.core.state import HistoryKind, ReplyReceived, SagaInstance, StartSaga
from saga_defs import OrderSaga, OrderSagaV2, versioned_registry
from service_sdk.contract import Outcome

NOW = datetime(2026, 12, 1, tzinfo=UTC)
DATA: dict[str, Any] = {
    "order_id": "o-1",
    "customer_id": "c-1",
    "items": [{"sku": "s", "quantity": 1}],
    "amount_cents": 100,
}


def _v1(*, admit: bool = True) -> SagaInstance:
    return start_saga(OrderSaga, "s-1", StartSaga("m", DATA), NOW, admit=admit).instance


def _migrate(instance: SagaInstance, to: int = 2) -> Any:
    return migrate_saga(versioned_registry(), instance, to, actor="ann", reason="r", now=NOW)


def test_a_saga_awaiting_its_first_step_moves_and_its_data_is_upcast() -> None:
    moved = _migrate(_v1())
    assert moved.instance.definition_version == 2
    assert moved.instance.data["screening_id"] is None
    assert moved.commands == ()
    (entry,) = moved.history
    assert entry.kind is HistoryKind.OPERATOR_ACTION
    assert entry.detail["action"] == "migrate"
    assert (entry.detail["from_version"], entry.detail["to_version"]) == (1, 2)
    assert entry.detail["upcasters"] == ["OrderSagaV2.upcast_v1_to_v2"]
    # On version 2 now: the reserve's success leads to the inserted screening step.
    reply = ReplyReceived(
        "r",
        "reserve_inventory",
        moved.instance.command_id,
        1,
        Outcome.SUCCESS,
        {"reservation_id": "x"},
    )
    after = apply(OrderSagaV2, moved.instance, reply, NOW)
    assert after.instance.current_step == "screen_order"


def test_a_queued_saga_moves() -> None:
    assert _migrate(_v1(admit=False)).instance.definition_version == 2


def test_a_saga_past_the_inserted_step_cannot_move() -> None:
    saga = _v1()
    reply = ReplyReceived(
        "r", "reserve_inventory", saga.command_id, 1, Outcome.SUCCESS, {"reservation_id": "x"}
    )
    at_charge = apply(OrderSaga, saga, reply, NOW).instance
    assert at_charge.current_step == "charge_payment"
    with pytest.raises(InvalidOperatorActionError, match="cannot carry on from here"):
        _migrate(at_charge)


def test_migrations_go_forward_to_a_loaded_version_only() -> None:
    with pytest.raises(InvalidOperatorActionError, match="forward only"):
        _migrate(_v1(), to=1)
    with pytest.raises(UnknownSagaVersionError):
        _migrate(_v1(), to=3)
    assert upcasters(versioned_registry(), "order", 1, 1) == []
