"""Definitions are keyed by (name, version): a saga advances on the version it started with."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from coordinator.core.definition import SagaRegistry
from coordinator.core.errors import (
    SagaDefinitionError,
    UnknownSagaTypeError,
    UnknownSagaVersionError,
)
from coordinator.core.machine import apply, start_saga
from coordinator.core.state import ReplyReceived, StartSaga, command_id_for
from saga_defs import OrderSaga, OrderSagaV2, default_registry, versioned_registry
from service_sdk.contract import Outcome

NOW = datetime(2026, 12, 1, tzinfo=UTC)
ORDER = {
    "order_id": "o-1",
    "customer_id": "c-1",
    "items": [{"sku": "s", "quantity": 1}],
    "amount_cents": 100,
}


def test_versions_of_one_saga_type_are_registered_side_by_side() -> None:
    registry = versioned_registry()
    assert registry.keys() == (("order", 1), ("order", 2))
    assert registry.names() == ("order",)
    assert registry.get("order", 1) is OrderSaga
    assert registry.get("order", 2) is OrderSagaV2
    assert registry.versions_of("order") == (1, 2)
    assert list(registry) == [OrderSaga, OrderSagaV2]
    assert registry.has("order", 1)
    assert not registry.has("order", 3)
    assert registry.services() == ("inventory", "payment", "shipping", "fraud")


def test_new_sagas_start_on_the_newest_version_unless_pinned() -> None:
    assert versioned_registry().get("order") is OrderSagaV2
    assert versioned_registry().start_version("order") == 2
    pinned = versioned_registry().pinned({"order": 1})
    assert pinned.get("order") is OrderSaga
    assert pinned.get("order", 2) is OrderSagaV2  # still runs the sagas started on 2


def test_pinning_a_version_that_is_not_registered_is_refused() -> None:
    with pytest.raises(SagaDefinitionError, match="start version 2 of saga type 'order'"):
        default_registry().pinned({"order": 2})
    with pytest.raises(SagaDefinitionError, match="two definitions are named 'order' version 1"):
        SagaRegistry([OrderSaga, OrderSaga])


def test_a_missing_version_and_a_missing_type_are_told_apart() -> None:
    registry = SagaRegistry([OrderSagaV2])
    with pytest.raises(UnknownSagaVersionError, match="'order' version 1 is not loaded here"):
        registry.get("order", 1)
    with pytest.raises(UnknownSagaTypeError, match="unknown saga type 'nope'") as caught:
        registry.get("nope", 1)
    assert not isinstance(caught.value, UnknownSagaVersionError)


def test_version_2_inserts_a_step_and_version_1_data_is_version_2_data() -> None:
    assert [s.name for s in OrderSaga.steps] == [
        "reserve_inventory",
        "charge_payment",
        "schedule_shipping",
    ]
    assert [s.name for s in OrderSagaV2.steps] == [
        "reserve_inventory",
        "screen_order",
        "charge_payment",
        "schedule_shipping",
    ]
    v1 = start_saga(OrderSaga, "s-1", StartSaga("m-1", ORDER), NOW).instance
    OrderSagaV2.data_model.model_validate(v1.data)


@pytest.mark.parametrize(("version", "next_step"), [(1, "charge_payment"), (2, "screen_order")])
def test_a_saga_advances_with_the_version_it_started_on(version: int, next_step: str) -> None:
    registry = versioned_registry()
    started = start_saga(registry.get("order", version), "s-1", StartSaga("m-1", ORDER), NOW)
    saga = started.instance
    assert saga.definition_version == version
    reply = ReplyReceived(
        message_id="r-1",
        step="reserve_inventory",
        command_id=command_id_for("s-1", "reserve_inventory", compensation=False),
        attempt=1,
        outcome=Outcome.SUCCESS,
        payload={"reservation_id": "res-1"},
    )
    after = apply(registry.get(saga.saga_type, saga.definition_version), saga, reply, NOW)
    assert after.instance.current_step == next_step
    assert [c.step for c in after.commands] == [next_step]
