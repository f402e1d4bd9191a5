"""The inventory participant: reserves stock for an order and releases it on compensation.

Tables (schema ``inventory``): ``stock`` (on hand per SKU, never negative) and
``reservations`` (one per order, with how often it was reserved and released, so a double
execution is visible).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.demo.participants.pace import pace
from saga_defs.order.contracts import OrderItem, ReleaseStock, ReserveStock, StockReserved
from service_sdk import CommandRejected, HandlerContext, Service

__all__ = ["install", "release_stock", "reserve_stock", "seed", "service"]

service = Service("inventory", schema="inventory")

_DDL = (
    "CREATE SCHEMA IF NOT EXISTS inventory",
    """
    CREATE TABLE IF NOT EXISTS inventory.stock (
        sku text PRIMARY KEY,
        on_hand integer NOT NULL CHECK (on_hand >= 0)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS inventory.reservations (
        order_id text PRIMARY KEY,
        items jsonb NOT NULL,
        status text NOT NULL CHECK (status IN ('reserved', 'released')),
        reserve_count integer NOT NULL DEFAULT 1,
        release_count integer NOT NULL DEFAULT 0,
        created_at timestamptz NOT NULL DEFAULT now(),
        released_at timestamptz
    )
    """,
)

_PUT_BACK = text("UPDATE inventory.stock SET on_hand = on_hand + :quantity WHERE sku = :sku")
# The whole reservation in one statement (one round trip, whatever the number of SKUs): the
# stock rows are locked in SKU order (so concurrent orders cannot deadlock), taken where enough
# is on hand, and the reservation is written only if every SKU was taken. A second
# reservation of the same order is counted, not refused: the SDK is what prevents double
# execution, and the ledger check must be able to see it if it ever fails.
_RESERVE = text(
    """
    WITH wanted AS (
        SELECT sku, quantity FROM jsonb_to_recordset(:wanted) AS w(sku text, quantity integer)
    ), locked AS (
        SELECT s.sku FROM inventory.stock s JOIN wanted w USING (sku)
        ORDER BY s.sku FOR UPDATE OF s
    ), taken AS (
        UPDATE inventory.stock s SET on_hand = s.on_hand - w.quantity
        FROM wanted w, locked l
        WHERE s.sku = w.sku AND l.sku = w.sku AND s.on_hand >= w.quantity
        RETURNING s.sku
    ), reserved AS (
        INSERT INTO inventory.reservations (order_id, items, status)
        SELECT :order_id, :items, 'reserved'
        WHERE (SELECT count(*) FROM taken) = (SELECT count(*) FROM wanted)
        ON CONFLICT (order_id) DO UPDATE
        SET reserve_count = inventory.reservations.reserve_count + 1,
            items = EXCLUDED.items,
            status = 'reserved'
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM reserved) AS reserved,
           (SELECT min(w.sku) FROM wanted w WHERE w.sku NOT IN (SELECT sku FROM taken)) AS short
    """
).bindparams(bindparam("wanted", type_=JSONB), bindparam("items", type_=JSONB))
_SELECT_RESERVATION = text(
    "SELECT items, status FROM inventory.reservations WHERE order_id = :order_id FOR UPDATE"
).columns(items=JSONB)
_RELEASE = text(
    "UPDATE inventory.reservations "
    "SET status = 'released', release_count = release_count + 1, released_at = now() "
    "WHERE order_id = :order_id"
)


async def install(conn: AsyncConnection) -> None:
    """Create the ``inventory`` schema and its tables if they do not exist."""
    for statement in _DDL:
        await conn.execute(text(statement))


async def seed(conn: AsyncConnection, skus: Mapping[str, int]) -> None:
    """Set the stock on hand of each SKU (inserting SKUs not yet known)."""
    if not skus:
        return
    await conn.execute(
        text(
            "INSERT INTO inventory.stock (sku, on_hand) VALUES (:sku, :on_hand) "
            "ON CONFLICT (sku) DO UPDATE SET on_hand = EXCLUDED.on_hand"
        ),
        [{"sku": sku, "on_hand": on_hand} for sku, on_hand in skus.items()],
    )


def _quantities(items: Iterable[OrderItem]) -> list[tuple[str, int]]:
    """Quantities per SKU, in SKU order: concurrent orders lock stock rows in the same
    order, so they cannot deadlock."""
    totals: Counter[str] = Counter()
    for item in items:
        totals[item.sku] += item.quantity
    return sorted(totals.items())


@service.handles(ReserveStock)
async def reserve_stock(cmd: ReserveStock, ctx: HandlerContext) -> StockReserved:
    """Take the order's items off the shelf; refuse if any SKU lacks stock."""
    await pace()
    wanted = [{"sku": sku, "quantity": quantity} for sku, quantity in _quantities(cmd.items)]
    items = [item.model_dump(mode="json") for item in cmd.items]
    result = await ctx.connection.execute(
        _RESERVE, {"wanted": wanted, "items": items, "order_id": cmd.order_id}
    )
    row = result.one()
    if not row.reserved:
        # The SDK rolls back the SKUs already taken together with the handler's savepoint.
        requested = dict(_quantities(cmd.items)).get(row.short)
        raise CommandRejected(
            f"insufficient stock for {row.short}", data={"sku": row.short, "requested": requested}
        )
    return StockReserved(reservation_id=f"rsv-{cmd.order_id}")


@service.handles(ReleaseStock)
async def release_stock(cmd: ReleaseStock, ctx: HandlerContext) -> dict[str, Any]:
    """Put a reserved order's items back; nothing to do (and success) otherwise."""
    await pace()
    row = (await ctx.connection.execute(_SELECT_RESERVATION, {"order_id": cmd.order_id})).first()
    if row is None or row.status != "reserved":
        return {"released": False}
    reserved = [OrderItem.model_validate(item) for item in row.items]
    for sku, quantity in _quantities(reserved):
        await ctx.connection.execute(_PUT_BACK, {"sku": sku, "quantity": quantity})
    await ctx.connection.execute(_RELEASE, {"order_id": cmd.order_id})
    return {"released": True}
