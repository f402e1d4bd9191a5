"""Version 2 of the order saga: a fraud screening step inserted before the charge.

The example of a definition change deployed while sagas are in flight. Version 1
(:class:`~saga_defs.order.saga.OrderSaga`) stays registered next to it, so sagas started on
version 1 finish through version 1's steps; new sagas start on version 2 (the newest
registered, unless configuration pins another). The saga data gains ``screening_id``; an
operator who moves a version 1 saga onto version 2 (``saga migrate``) gets its data upcast by
:meth:`OrderSagaV2.upcast_v1_to_v2`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from coordinator.core.definition import RetryPolicy, SagaDefinition, Step
from saga_defs.order.contracts import OrderScreened, ScreenOrder
from saga_defs.order.saga import OrderData, OrderSaga

__all__ = ["OrderDataV2", "OrderSagaV2"]


class OrderDataV2(OrderData):
    """The order saga's data in version 2: version 1's, plus the fraud screening's id."""

    screening_id: str | None = None


def _screened(data: OrderDataV2, reply: OrderScreened) -> OrderDataV2:
    return data.model_copy(update={"screening_id": reply.screening_id})


_reserve, _charge, _ship = OrderSaga.steps


class OrderSagaV2(SagaDefinition[OrderDataV2]):
    """Order -> inventory -> fraud screening -> payment -> shipping."""

    name = "order"
    version = 2
    data_model = OrderDataV2
    steps = (
        _reserve,
        Step[OrderDataV2](
            name="screen_order",
            service="fraud",
            command=ScreenOrder,
            build=lambda d: ScreenOrder(
                order_id=d.order_id, customer_id=d.customer_id, amount_cents=d.amount_cents
            ),
            on_success=_screened,
            # Screening has no effect to undo: a fence settles it if the saga gives up on it.
            timeout=timedelta(seconds=30),
            retry=RetryPolicy(max_attempts=3),
        ),
        _charge,
        _ship,
    )

    @classmethod
    def upcast_v1_to_v2(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Version 1 data as version 2 data: no screening has happened."""
        return {**data, "screening_id": None}
