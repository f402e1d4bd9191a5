"""The order saga: reserve inventory, charge payment, schedule shipping."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, ConfigDict, Field

from coordinator.core.definition import Compensation, RetryPolicy, SagaDefinition, Step
from saga_defs.order.contracts import (
    ChargePayment,
    OrderItem,
    PaymentCharged,
    RefundPayment,
    ReleaseStock,
    ReserveStock,
    ScheduleShipment,
    ShipmentScheduled,
    StockReserved,
)

__all__ = ["OrderData", "OrderSaga"]


class OrderData(BaseModel):
    """The order saga's data: the order, then what each step reported."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    order_id: str = Field(min_length=1, max_length=100)
    customer_id: str = Field(min_length=1, max_length=100)
    items: tuple[OrderItem, ...] = Field(min_length=1)
    amount_cents: int = Field(gt=0)
    currency: str = Field(default="EUR", min_length=3, max_length=3)
    reservation_id: str | None = None
    charge_id: str | None = None
    shipment_id: str | None = None


# Each command declares its reply model: the engine validates the reply before these run.


def _reserved(data: OrderData, reply: StockReserved) -> OrderData:
    return data.model_copy(update={"reservation_id": reply.reservation_id})


def _charged(data: OrderData, reply: PaymentCharged) -> OrderData:
    return data.model_copy(update={"charge_id": reply.charge_id})


def _shipped(data: OrderData, reply: ShipmentScheduled) -> OrderData:
    return data.model_copy(update={"shipment_id": reply.shipment_id})


class OrderSaga(SagaDefinition[OrderData]):
    """Order -> inventory -> payment -> shipping, compensating in reverse on failure."""

    name = "order"
    version = 1
    data_model = OrderData
    search_keys = ("order_id", "customer_id")
    steps = (
        Step[OrderData](
            name="reserve_inventory",
            service="inventory",
            command=ReserveStock,
            build=lambda d: ReserveStock(order_id=d.order_id, items=d.items),
            on_success=_reserved,
            compensation=Compensation[OrderData](
                ReleaseStock, lambda d: ReleaseStock(order_id=d.order_id)
            ),
            timeout=timedelta(seconds=30),
            retry=RetryPolicy(max_attempts=3),
        ),
        Step[OrderData](
            name="charge_payment",
            service="payment",
            command=ChargePayment,
            build=lambda d: ChargePayment(
                order_id=d.order_id,
                customer_id=d.customer_id,
                amount_cents=d.amount_cents,
                currency=d.currency,
            ),
            on_success=_charged,
            compensation=Compensation[OrderData](
                RefundPayment,
                lambda d: RefundPayment(order_id=d.order_id, amount_cents=d.amount_cents),
            ),
            timeout=timedelta(seconds=30),
            retry=RetryPolicy(max_attempts=3),
        ),
        Step[OrderData](
            name="schedule_shipping",
            service="shipping",
            command=ScheduleShipment,
            build=lambda d: ScheduleShipment(
                order_id=d.order_id, customer_id=d.customer_id, items=d.items
            ),
            on_success=_shipped,
            timeout=timedelta(seconds=30),
            retry=RetryPolicy(max_attempts=3),
        ),
    )
