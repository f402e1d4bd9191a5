"""The wire contract of the order saga: the commands its participants receive and the data
their success replies carry. Participants import this module; it depends only on the SDK."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from service_sdk.contract import Command

__all__ = [
    "ChargePayment",
    "OrderItem",
    "OrderScreened",
    "PaymentCharged",
    "RefundPayment",
    "ReleaseStock",
    "ReserveStock",
    "ScheduleShipment",
    "ScreenOrder",
    "ShipmentScheduled",
    "StockReserved",
]


class OrderItem(BaseModel):
    """A line of an order."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sku: str = Field(min_length=1, max_length=64)
    quantity: int = Field(gt=0, le=10_000)


class StockReserved(BaseModel):
    """Inventory's success reply to :class:`ReserveStock`."""

    reservation_id: str


class ReserveStock(Command):
    """Inventory: reserve the order's items."""

    message_type: ClassVar[str] = "inventory.reserve_stock"
    reply_model: ClassVar[type[BaseModel] | None] = StockReserved
    order_id: str
    items: tuple[OrderItem, ...] = Field(min_length=1)


class ReleaseStock(Command):
    """Inventory: undo the order's reservation (compensation of ReserveStock)."""

    message_type: ClassVar[str] = "inventory.release_stock"
    order_id: str


class PaymentCharged(BaseModel):
    """Payment's success reply to :class:`ChargePayment`."""

    charge_id: str


class ChargePayment(Command):
    """Payment: charge the customer for the order."""

    message_type: ClassVar[str] = "payment.charge_payment"
    reply_model: ClassVar[type[BaseModel] | None] = PaymentCharged
    order_id: str
    customer_id: str
    amount_cents: int = Field(gt=0)
    currency: str = Field(min_length=3, max_length=3)


class RefundPayment(Command):
    """Payment: refund the order's charge (compensation of ChargePayment)."""

    message_type: ClassVar[str] = "payment.refund_payment"
    order_id: str
    amount_cents: int = Field(gt=0)


class ShipmentScheduled(BaseModel):
    """Shipping's success reply to :class:`ScheduleShipment`."""

    shipment_id: str


class ScheduleShipment(Command):
    """Shipping: schedule the order's delivery."""

    message_type: ClassVar[str] = "shipping.schedule_shipment"
    reply_model: ClassVar[type[BaseModel] | None] = ShipmentScheduled
    order_id: str
    customer_id: str
    items: tuple[OrderItem, ...] = Field(min_length=1)


class OrderScreened(BaseModel):
    """Fraud's success reply to :class:`ScreenOrder`."""

    screening_id: str


class ScreenOrder(Command):
    """Fraud: screen the order before the customer is charged (version 2 of the order saga)."""

    message_type: ClassVar[str] = "fraud.screen_order"
    reply_model: ClassVar[type[BaseModel] | None] = OrderScreened
    order_id: str
    customer_id: str
    amount_cents: int = Field(gt=0)
