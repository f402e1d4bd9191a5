"""Saga definitions run by the coordinator."""

from typing import Any

from coordinator.core.definition import SagaDefinition, SagaRegistry
from saga_defs.order import OrderData, OrderSaga
from saga_defs.order.saga_v2 import OrderDataV2, OrderSagaV2

__all__ = [
    "ALL_SAGAS",
    "OrderData",
    "OrderDataV2",
    "OrderSaga",
    "OrderSagaV2",
    "default_registry",
    "versioned_registry",
]

ALL_SAGAS: tuple[type[SagaDefinition[Any]], ...] = (OrderSaga,)


def default_registry() -> SagaRegistry:
    """A registry holding every saga defined in this package."""
    return SagaRegistry(ALL_SAGAS)


def versioned_registry() -> SagaRegistry:
    """The order saga in versions 1 and 2 side by side: new sagas start on version 2, sagas
    started on version 1 finish on it (``SAGA_REGISTRY=saga_defs:versioned_registry``)."""
    return SagaRegistry((OrderSaga, OrderSagaV2))
