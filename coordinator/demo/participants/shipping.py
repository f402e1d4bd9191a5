"""The shipping participant: schedules the order's delivery (the saga's last step, so it has
no compensation).

Table (schema ``shipping``): ``shipments`` (one per order, with how often it was scheduled,
so a double execution is visible).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.demo.participants.pace import pace
from saga_defs.order.contracts import ScheduleShipment, ShipmentScheduled
from service_sdk import BatchContext, BatchResult, Service

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
# double execution, and the ledger check must be able to see it if it ever fails. (The same
# order twice in one batch makes this statement fail; the SDK then schedules one at a time.)
_SCHEDULE = text(
    """
    INSERT INTO shipping.shipments (order_id, customer_id, items)
    SELECT s ->> 'order_id', s ->> 'customer_id', s -> 'items'
    FROM jsonb_array_elements(:shipments) AS s
    ON CONFLICT (order_id) DO UPDATE
    SET schedule_count = shipping.shipments.schedule_count + 1
    """
).bindparams(bindparam("shipments", type_=JSONB))


async def install(conn: AsyncConnection) -> None:
    """Create the ``shipping`` schema and its table if they do not exist."""
    for statement in _DDL:
        await conn.execute(text(statement))


@service.handles_batch(ScheduleShipment)
async def schedule_shipment(
    commands: Sequence[ScheduleShipment], ctx: BatchContext
) -> list[BatchResult]:
    """Schedule the delivery of each order's items (one statement for the batch)."""
    await pace(len(commands))
    await ctx.connection.execute(
        _SCHEDULE,
        {
            "shipments": [
                {
                    "order_id": cmd.order_id,
                    "customer_id": cmd.customer_id,
                    "items": [item.model_dump(mode="json") for item in cmd.items],
                }
                for cmd in commands
            ]
        },
    )
    return [ShipmentScheduled(shipment_id=f"shp-{cmd.order_id}") for cmd in commands]
