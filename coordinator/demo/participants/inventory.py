"""The inventory participant: reserves stock for an order and releases it on compensation.

Tables (schema ``inventory``): ``stock`` (on hand per SKU, never negative) and
``reservations`` (one per order, with how often it was reserved and released, so a double
execution is visible).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.demo.participants.pace import pace
from saga_defs.order.contracts import OrderItem, ReleaseStock, ReserveStock, StockReserved
from service_sdk import BatchContext, BatchResult, CommandRejected, HandlerContext, Service

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
# A batch of reservations in three statements, whatever the number of orders and SKUs: the
# stock rows of all of them are locked in SKU order (so concurrent batches cannot deadlock),
# the orders are served in turn from what is on hand (each all or nothing), and what they
# took is written back with their reservations. A second reservation of the same order is
# counted, not refused: the SDK is what prevents double execution, and the ledger check must
# be able to see it if it ever fails. (The same order twice in one batch makes the last
# statement fail; the SDK then reserves one order at a time.)
_LOCK_STOCK = text(
    "SELECT sku, on_hand FROM inventory.stock "
    "WHERE sku = ANY(CAST(:skus AS text[])) ORDER BY sku FOR UPDATE"
)
_TAKE = text(
    """
    UPDATE inventory.stock AS s SET on_hand = s.on_hand - t.quantity
    FROM unnest(CAST(:skus AS text[]), CAST(:quantities AS integer[])) AS t (sku, quantity)
    WHERE s.sku = t.sku
    """
)
_RESERVE = text(
    """
    INSERT INTO inventory.reservations (order_id, items, status)
    SELECT r ->> 'order_id', r -> 'items', 'reserved'
    FROM jsonb_array_elements(:reservations) AS r
    ON CONFLICT (order_id) DO UPDATE
    SET reserve_count = inventory.reservations.reserve_count + 1,
        items = EXCLUDED.items,
        status = 'reserved'
    """
).bindparams(bindparam("reservations", type_=JSONB))
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


@service.handles_batch(ReserveStock)
async def reserve_stock(commands: Sequence[ReserveStock], ctx: BatchContext) -> list[BatchResult]:
    """Take each order's items off the shelf, in turn; refuse an order if any SKU lacks stock."""
    await pace(len(commands))
    wanted = [_quantities(cmd.items) for cmd in commands]
    skus = sorted({sku for quantities in wanted for sku, _ in quantities})
    on_hand = {
        row.sku: row.on_hand for row in await ctx.connection.execute(_LOCK_STOCK, {"skus": skus})
    }
    taken: Counter[str] = Counter()
    reserved: list[ReserveStock] = []
    results: list[BatchResult] = []
    for cmd, quantities in zip(commands, wanted, strict=True):
        # The first SKU (in SKU order) without enough left for this order, if any.
        short = next(
            (
                (sku, quantity)
                for sku, quantity in quantities
                if sku not in on_hand or on_hand[sku] - taken[sku] < quantity
            ),
            None,
        )
        if short is not None:
            sku, requested = short
            results.append(
                CommandRejected(
                    f"insufficient stock for {sku}", data={"sku": sku, "requested": requested}
                )
            )
            continue
        taken.update(dict(quantities))
        reserved.append(cmd)
        results.append(StockReserved(reservation_id=f"rsv-{cmd.order_id}"))
    if reserved:
        await ctx.connection.execute(
            _TAKE, {"skus": list(taken), "quantities": [taken[sku] for sku in taken]}
        )
        await ctx.connection.execute(
            _RESERVE,
            {
                "reservations": [
                    {
                        "order_id": cmd.order_id,
                        "items": [item.model_dump(mode="json") for item in cmd.items],
                    }
                    for cmd in reserved
                ]
            },
        )
    return results


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
