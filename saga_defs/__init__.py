"""Saga definitions run by the coordinator."""

from typing import Any

from coordinator.core.definition import SagaDefinition, SagaRegistry
from saga_defs.order import OrderData, OrderSaga

__all__ = ["ALL_SAGAS", "OrderData", "OrderSaga", "default_registry"]

ALL_SAGAS: tuple[type[SagaDefinition[Any]], ...] = (OrderSaga,)


def default_registry() -> SagaRegistry:
    """A registry holding every saga defined in this package."""
    return SagaRegistry(ALL_SAGAS)
