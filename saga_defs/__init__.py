"""Saga definitions run by the coordinator."""

from typing import Any

from coordinator.core.definition import SagaDefinition, SagaRegistry
from saga_defs.order import OrderData, OrderSaga
from saga_defs.order.saga_v2 import OrderDataV2, OrderSagaV2
from saga_defs.trip import TRIP_SAGAS, TripData, TripSaga

__all__ = [
    "ALL_SAGAS",
    "OrderData",
    "OrderDataV2",
    "OrderSaga",
    "OrderSagaV2",
    "TripData",
    "TripSaga",
    "default_registry",
    "trip_registry",
    "versioned_registry",
]

ALL_SAGAS: tuple[type[SagaDefinition[Any]], ...] = (OrderSaga,)


def default_registry() -> SagaRegistry:
    """A registry holding every saga defined in this package."""
    return SagaRegistry(ALL_SAGAS)


def trip_registry() -> SagaRegistry:
    """The trip saga with its loyalty sagas and the nightly statement, beside the order saga
    (``SAGA_REGISTRY=saga_defs:trip_registry``; ``saga demo --saga trip`` runs it)."""
    return SagaRegistry((*ALL_SAGAS, *TRIP_SAGAS))


def versioned_registry() -> SagaRegistry:
    """The order saga in versions 1 and 2 side by side: new sagas start on version 2, sagas
    started on version 1 finish on it (``SAGA_REGISTRY=saga_defs:versioned_registry``)."""
    return SagaRegistry((OrderSaga, OrderSagaV2))
