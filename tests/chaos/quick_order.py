"""The order saga with second-scale timeouts, for tests that must outlast a step's attempts.

Loaded by coordinator processes through ``SAGA_REGISTRY=tests.chaos.quick_order:registry``
(with the repository root on ``PYTHONPATH``). Same name, steps and commands as the real order
saga, so the example participants serve it unchanged.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from coordinator.core.definition import RetryPolicy, SagaDefinition, SagaRegistry
from saga_defs.order import OrderData, OrderSaga

STEP_TIMEOUT = timedelta(seconds=2)
COMPENSATION_TIMEOUT = timedelta(seconds=3)
_RETRY = RetryPolicy(max_attempts=3, initial_backoff=timedelta(milliseconds=200))
_COMPENSATION_RETRY = RetryPolicy(max_attempts=10, initial_backoff=timedelta(milliseconds=500))


class QuickOrderSaga(SagaDefinition[OrderData]):
    """:class:`OrderSaga` whose commands time out after two seconds."""

    name = OrderSaga.name
    version = OrderSaga.version
    data_model = OrderData
    steps = tuple(
        replace(
            step,
            timeout=STEP_TIMEOUT,
            retry=_RETRY,
            compensation=None
            if step.compensation is None
            else replace(
                step.compensation, timeout=COMPENSATION_TIMEOUT, retry=_COMPENSATION_RETRY
            ),
        )
        for step in OrderSaga.steps
    )


def registry() -> SagaRegistry:
    """The registry the coordinator processes of the overload tests run."""
    return SagaRegistry([QuickOrderSaga])
