"""The payment participant: charges the customer and refunds on compensation.

Tables (schema ``payment``): ``accounts`` (whether a customer's card works) and ``charges``
(one per order, with how often it was charged and refunded, so a double execution is
visible).

Fault injection (demo and tests only): while ``payment.outage`` holds a customer's row, charging
that customer fails with :class:`PaymentProviderDownError`, an unexpected error, as when the
card processor is unreachable. The SDK retries it and then dead-letters the command
(``handler_error``); :func:`start_outage` and :func:`end_outage` switch it, and after the
outage the dead letters can be replayed with ``saga dlq replay --reason handler_error``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.demo.participants.pace import pace
from saga_defs.order.contracts import ChargePayment, PaymentCharged, RefundPayment
from service_sdk import BatchContext, BatchResult, CommandRejected, HandlerContext, Service

__all__ = [
    "PaymentProviderDownError",
    "charge_payment",
    "end_outage",
    "install",
    "refund_payment",
    "seed",
    "service",
    "start_outage",
]

service = Service("payment", schema="payment")

_DDL = (
    "CREATE SCHEMA IF NOT EXISTS payment",
    """
    CREATE TABLE IF NOT EXISTS payment.accounts (
        customer_id text PRIMARY KEY,
        card_status text NOT NULL CHECK (card_status IN ('ok', 'declined'))
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS payment.charges (
        order_id text PRIMARY KEY,
        customer_id text NOT NULL,
        amount_cents integer NOT NULL CHECK (amount_cents > 0),
        currency text NOT NULL,
        status text NOT NULL CHECK (status IN ('charged', 'refunded')),
        charge_count integer NOT NULL DEFAULT 1,
        refund_count integer NOT NULL DEFAULT 0,
        created_at timestamptz NOT NULL DEFAULT now(),
        refunded_at timestamptz
    )
    """,
    "CREATE TABLE IF NOT EXISTS payment.outage (customer_id text PRIMARY KEY)",
)

# One round trip for a batch's customers: their cards and any simulated outage.
_SELECT_CARDS = text(
    """
    SELECT c.customer_id, a.card_status, o.customer_id IS NOT NULL AS outage
    FROM unnest(CAST(:customers AS text[])) AS c (customer_id)
    LEFT JOIN payment.accounts AS a ON a.customer_id = c.customer_id
    LEFT JOIN payment.outage AS o ON o.customer_id = c.customer_id
    """
)
# A second charge of the same order is counted, not refused: the SDK is what prevents double
# execution, and the ledger check must be able to see it if it ever fails. (The same order
# twice in one batch makes this statement fail; the SDK then charges one at a time.)
_CHARGE = text(
    """
    INSERT INTO payment.charges (order_id, customer_id, amount_cents, currency, status)
    SELECT order_id, customer_id, amount_cents, currency, 'charged'
    FROM unnest(
        CAST(:order_ids AS text[]),
        CAST(:customer_ids AS text[]),
        CAST(:amounts AS integer[]),
        CAST(:currencies AS text[])
    ) AS t (order_id, customer_id, amount_cents, currency)
    ON CONFLICT (order_id) DO UPDATE
    SET charge_count = payment.charges.charge_count + 1, status = 'charged'
    """
)
_SELECT_CHARGE = text(
    "SELECT status, amount_cents FROM payment.charges WHERE order_id = :order_id FOR UPDATE"
)
_REFUND = text(
    "UPDATE payment.charges "
    "SET status = 'refunded', refund_count = refund_count + 1, refunded_at = now() "
    "WHERE order_id = :order_id"
)


async def install(conn: AsyncConnection) -> None:
    """Create the ``payment`` schema and its tables if they do not exist."""
    for statement in _DDL:
        await conn.execute(text(statement))


async def seed(conn: AsyncConnection, customers: Mapping[str, str]) -> None:
    """Set each customer's card status (``ok`` or ``declined``)."""
    if not customers:
        return
    await conn.execute(
        text(
            "INSERT INTO payment.accounts (customer_id, card_status) VALUES (:customer_id, :status) "
            "ON CONFLICT (customer_id) DO UPDATE SET card_status = EXCLUDED.card_status"
        ),
        [{"customer_id": c, "status": status} for c, status in customers.items()],
    )


class PaymentProviderDownError(Exception):
    """The (simulated) card processor is unreachable; not a business failure."""


async def start_outage(conn: AsyncConnection, customers: Iterable[str]) -> None:
    """Make charging these customers fail until :func:`end_outage` (fault injection)."""
    rows = [{"customer_id": c} for c in customers]
    if rows:
        await conn.execute(
            text(
                "INSERT INTO payment.outage (customer_id) VALUES (:customer_id) "
                "ON CONFLICT DO NOTHING"
            ),
            rows,
        )


async def end_outage(conn: AsyncConnection) -> None:
    """End every simulated outage."""
    await conn.execute(text("DELETE FROM payment.outage"))


@service.handles_batch(ChargePayment)
async def charge_payment(commands: Sequence[ChargePayment], ctx: BatchContext) -> list[BatchResult]:
    """Charge each order's amount; refuse unknown customers and declined cards.

    A batch handler: two statements for all the commands that arrived together.
    """
    await pace(len(commands))
    cards = {
        row.customer_id: (row.card_status, row.outage)
        for row in await ctx.connection.execute(
            _SELECT_CARDS, {"customers": sorted({cmd.customer_id for cmd in commands})}
        )
    }
    down = sorted({cmd.customer_id for cmd in commands if cards[cmd.customer_id][1]})
    if down:
        # Fails the batch: the SDK then charges one command at a time, so only these fail.
        raise PaymentProviderDownError(f"card processor unreachable for {', '.join(down)}")
    results: list[BatchResult] = []
    charged: list[ChargePayment] = []
    for cmd in commands:
        if cards[cmd.customer_id][0] == "ok":
            charged.append(cmd)
            results.append(PaymentCharged(charge_id=f"ch-{cmd.order_id}"))
        else:
            results.append(CommandRejected("card declined", data={"customer_id": cmd.customer_id}))
    if charged:
        await ctx.connection.execute(
            _CHARGE,
            {
                "order_ids": [cmd.order_id for cmd in charged],
                "customer_ids": [cmd.customer_id for cmd in charged],
                "amounts": [cmd.amount_cents for cmd in charged],
                "currencies": [cmd.currency for cmd in charged],
            },
        )
    return results


@service.handles(RefundPayment)
async def refund_payment(cmd: RefundPayment, ctx: HandlerContext) -> dict[str, Any]:
    """Refund a charged order; nothing to do (and success) otherwise."""
    await pace()
    row = (await ctx.connection.execute(_SELECT_CHARGE, {"order_id": cmd.order_id})).first()
    if row is None or row.status != "charged":
        return {"refunded": False}
    await ctx.connection.execute(_REFUND, {"order_id": cmd.order_id})
    return {"refunded": True, "amount_cents": row.amount_cents}
