"""The shipping participant: schedules the order's delivery (the saga's last step, so it has
no compensation).

Table (schema ``shipping``): ``shipments`` (one per order, with how often it was scheduled,
so a double execution is visible).
"""

from __future__ import annotations

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.demo.participants.pace import pace
from saga_defs.order.contracts import ScheduleShipment, ShipmentScheduled
from service_sdk import HandlerContext, Service

__all__ = ["install", "schedule_shipment", "service"]

service = Service("shipping", schema="shipping")

_DDL = (
    "CREATE SCHEMA IF NOT EXISTS shipping",
    """
    CREATE TABLE IF NOT EXISTS shipping.shipments (
        order_id text PRIMARY KEY,
        customer_id text NOT NULL,
        items jsonb NOT NULL,
        schedule_count integer NOT NULL DEFAULT 1,
        created_at timestamptz NOT NULL DEFAULT now()
    )
    """,
)

# A second scheduling of the same order is counted, not refused: the SDK is what prevents
# double execution, and the ledger check must be able to see it if it ever fails.
_SCHEDULE = text(
    """
    INSERT INTO shipping.shipments (order_id, customer_id, items)
    VALUES (:order_id, :customer_id, :items)
    ON CONFLICT (order_id) DO UPDATE
    SET schedule_count = shipping.shipments.schedule_count + 1
    """
).bindparams(bindparam("items", type_=JSONB))


async def install(conn: AsyncConnection) -> None:
    """Create the ``shipping`` schema and its table if they do not exist."""
    for statement in _DDL:
        await conn.execute(text(statement))


@service.handles(ScheduleShipment)
async def schedule_shipment(cmd: ScheduleShipment, ctx: HandlerContext) -> ShipmentScheduled:
    """Schedule the delivery of the order's items."""
    await pace()
    await ctx.connection.execute(
        _SCHEDULE,
        {
            "order_id": cmd.order_id,
            "customer_id": cmd.customer_id,
            "items": [item.model_dump(mode="json") for item in cmd.items],
        },
    )
    return ShipmentScheduled(shipment_id=f"shp-{cmd.order_id}")
