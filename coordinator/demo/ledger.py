"""The ledger check: do the participants' own tables agree with how each saga ended?

It reads only the participants' tables (never the coordinator's), so it checks the
end-to-end promise: every command took effect exactly once, and every compensation undid
its step exactly once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from saga_defs.order.contracts import OrderItem

__all__ = ["LedgerReport", "check_ledger"]

SagaOutcome = Literal["COMPLETED", "COMPENSATED"]

MAX_PROBLEMS = 20


@dataclass(frozen=True)
class LedgerReport:
    """The result of :func:`check_ledger`.

    Attributes:
        ok: True when no violation was found.
        problems: The first violations (at most ``MAX_PROBLEMS``, then a count of the rest).
    """

    ok: bool
    problems: list[str] = field(default_factory=list)


class _Problems:
    def __init__(self) -> None:
        self.found: list[str] = []
        self.total = 0

    def add(self, problem: str) -> None:
        self.total += 1
        if len(self.found) < MAX_PROBLEMS:
            self.found.append(problem)

    def report(self) -> LedgerReport:
        problems = list(self.found)
        if self.total > len(self.found):
            problems.append(f"... and {self.total - len(self.found)} more")
        return LedgerReport(ok=self.total == 0, problems=problems)


async def _rows(conn: AsyncConnection, sql: str, ids: Sequence[str]) -> dict[str, Any]:
    # Only this run's orders: a shared database may hold earlier runs' rows.
    rows = await conn.execute(text(f"{sql} WHERE order_id = ANY(:ids)"), {"ids": list(ids)})
    return {row.order_id: row for row in rows}


async def check_ledger(
    conn: AsyncConnection,
    orders: Mapping[str, SagaOutcome],
    initial_stock: Mapping[str, int],
    ordered: Mapping[str, Sequence[OrderItem]],
) -> LedgerReport:
    """Check the participants' tables against the sagas' outcomes.

    A completed order has one reservation (reserved once, never released), one charge
    (charged once, never refunded) and one shipment (scheduled once). A compensated order
    has its reservation, if any, released exactly once, its charge, if any, refunded
    exactly once, and no shipment. Stock adds up per SKU: on hand is the initial stock
    minus what completed orders took. Effects of ordered but unfinished orders are
    violations too. Only the orders in ``ordered`` (and their SKUs) are looked at.

    Args:
        conn: A connection to the participants' database.
        orders: How each order's saga ended, by order id.
        initial_stock: Stock on hand per SKU before the orders.
        ordered: Each order's items, by order id.
    """
    problems = _Problems()
    ids = sorted(ordered.keys() | orders.keys())
    reservations = await _rows(
        conn,
        "SELECT order_id, status, reserve_count, release_count FROM inventory.reservations",
        ids,
    )
    charges = await _rows(
        conn, "SELECT order_id, status, charge_count, refund_count FROM payment.charges", ids
    )
    shipments = await _rows(conn, "SELECT order_id, schedule_count FROM shipping.shipments", ids)

    for order_id, outcome in orders.items():
        reservation = reservations.get(order_id)
        charge = charges.get(order_id)
        shipment = shipments.get(order_id)
        if outcome == "COMPLETED":
            if reservation is None:
                problems.add(f"{order_id} completed without a reservation")
            elif (reservation.status, reservation.reserve_count, reservation.release_count) != (
                "reserved",
                1,
                0,
            ):
                problems.add(
                    f"{order_id} completed but its reservation is {reservation.status} "
                    f"(reserved {reservation.reserve_count}x, released "
                    f"{reservation.release_count}x)"
                )
            if charge is None:
                problems.add(f"{order_id} completed without a charge")
            elif (charge.status, charge.charge_count, charge.refund_count) != ("charged", 1, 0):
                problems.add(
                    f"{order_id} completed but its charge is {charge.status} "
                    f"(charged {charge.charge_count}x, refunded {charge.refund_count}x)"
                )
            if shipment is None:
                problems.add(f"{order_id} completed without a shipment")
            elif shipment.schedule_count != 1:
                problems.add(f"{order_id} shipment scheduled {shipment.schedule_count}x")
        else:
            if reservation is not None and (
                reservation.status,
                reservation.reserve_count,
                reservation.release_count,
            ) != ("released", 1, 1):
                problems.add(
                    f"{order_id} compensated but its reservation is {reservation.status} "
                    f"(reserved {reservation.reserve_count}x, released "
                    f"{reservation.release_count}x)"
                )
            if charge is not None and (
                charge.status,
                charge.charge_count,
                charge.refund_count,
            ) != ("refunded", 1, 1):
                problems.add(
                    f"{order_id} compensated but its charge is {charge.status} "
                    f"(charged {charge.charge_count}x, refunded {charge.refund_count}x)"
                )
            if shipment is not None:
                problems.add(f"{order_id} compensated but has a shipment")

    for table, rows in (
        ("reservation", reservations),
        ("charge", charges),
        ("shipment", shipments),
    ):
        for order_id in sorted(rows.keys() - orders.keys()):
            problems.add(f"{table} for {order_id}, which is not among the finished orders")

    taken: Counter[str] = Counter()
    for order_id, outcome in orders.items():
        if outcome == "COMPLETED":
            if order_id not in ordered:
                problems.add(f"{order_id} completed but its items are unknown")
            for item in ordered.get(order_id, ()):
                taken[item.sku] += item.quantity
    on_hand = {
        row.sku: row.on_hand
        for row in await conn.execute(text("SELECT sku, on_hand FROM inventory.stock"))
    }
    for sku in sorted(initial_stock.keys() | taken.keys()):
        expected = initial_stock.get(sku, 0) - taken[sku]
        actual = on_hand.get(sku)
        if actual != expected:
            problems.add(
                f"stock of {sku}: {actual} on hand, expected {expected} "
                f"({initial_stock.get(sku, 0)} initial - {taken[sku]} completed)"
            )
    return problems.report()
