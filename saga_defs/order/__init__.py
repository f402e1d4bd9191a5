"""The order saga and its wire contract."""

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
from saga_defs.order.saga import OrderData, OrderSaga

__all__ = [
    "ChargePayment",
    "OrderData",
    "OrderItem",
    "OrderSaga",
    "PaymentCharged",
    "RefundPayment",
    "ReleaseStock",
    "ReserveStock",
    "ScheduleShipment",
    "ShipmentScheduled",
    "StockReserved",
]
