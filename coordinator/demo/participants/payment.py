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

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.demo.participants.pace import pace
from saga_defs.order.contracts import ChargePayment, PaymentCharged, RefundPayment
from service_sdk import CommandRejected, HandlerContext, Service

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

# One round trip for both: the simulated outage and the card.
_SELECT_CARD = text(
    "SELECT (SELECT card_status FROM payment.accounts WHERE customer_id = :customer_id), "
    "EXISTS (SELECT 1 FROM payment.outage WHERE customer_id = :customer_id)"
)
# A second charge of the same order is counted, not refused: the SDK is what prevents double
# execution, and the ledger check must be able to see it if it ever fails.
_CHARGE = text(
    """
    INSERT INTO payment.charges (order_id, customer_id, amount_cents, currency, status)
    VALUES (:order_id, :customer_id, :amount_cents, :currency, 'charged')
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


@service.handles(ChargePayment)
async def charge_payment(cmd: ChargePayment, ctx: HandlerContext) -> PaymentCharged:
    """Charge the order's amount; refuse unknown customers and declined cards."""
    await pace()
    card, in_outage = (
        await ctx.connection.execute(_SELECT_CARD, {"customer_id": cmd.customer_id})
    ).one()
    if in_outage:
        raise PaymentProviderDownError(f"card processor unreachable for {cmd.customer_id}")
    if card != "ok":
        raise CommandRejected("card declined", data={"customer_id": cmd.customer_id})
    await ctx.connection.execute(
        _CHARGE,
        {
            "order_id": cmd.order_id,
            "customer_id": cmd.customer_id,
            "amount_cents": cmd.amount_cents,
            "currency": cmd.currency,
        },
    )
    return PaymentCharged(charge_id=f"ch-{cmd.order_id}")


@service.handles(RefundPayment)
async def refund_payment(cmd: RefundPayment, ctx: HandlerContext) -> dict[str, Any]:
    """Refund a charged order; nothing to do (and success) otherwise."""
    await pace()
    row = (await ctx.connection.execute(_SELECT_CHARGE, {"order_id": cmd.order_id})).first()
    if row is None or row.status != "charged":
        return {"refunded": False}
    await ctx.connection.execute(_REFUND, {"order_id": cmd.order_id})
    return {"refunded": True, "amount_cents": row.amount_cents}
