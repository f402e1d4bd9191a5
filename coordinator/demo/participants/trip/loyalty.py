"""The loyalty and notifications participants of the trip saga.

``loyalty`` (schema ``loyalty``): ``awards`` (one row per trip: points, how often awarded and
revoked) and ``statements`` (one row per nightly tick closed, with a count). ``notifications``
(schema ``notifications``): ``reminders`` (one per trip, when it was sent and how often).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.demo.participants.pace import pace
from saga_defs.trip.contracts import (
    AwardPoints,
    CloseStatement,
    PointsAwarded,
    RemindTraveller,
    RevokePoints,
)
from service_sdk import HandlerContext, Service

__all__ = ["install_loyalty", "install_notifications", "loyalty", "notifications"]

loyalty = Service("loyalty", schema="loyalty")
notifications = Service("notifications", schema="notifications")


async def install_loyalty(conn: AsyncConnection) -> None:
    """Create the ``loyalty`` schema and its tables if they do not exist."""
    for statement in (
        "CREATE SCHEMA IF NOT EXISTS loyalty",
        """
        CREATE TABLE IF NOT EXISTS loyalty.awards (
            trip_id text PRIMARY KEY,
            customer_id text NOT NULL,
            points integer NOT NULL,
            award_count integer NOT NULL DEFAULT 1,
            revoke_count integer NOT NULL DEFAULT 0
        )
        """,
        """
        CREATE TABLE IF NOT EXISTS loyalty.statements (
            at timestamptz PRIMARY KEY,
            close_count integer NOT NULL DEFAULT 1
        )
        """,
    ):
        await conn.execute(text(statement))


async def install_notifications(conn: AsyncConnection) -> None:
    """Create the ``notifications`` schema and its table if they do not exist."""
    for statement in (
        "CREATE SCHEMA IF NOT EXISTS notifications",
        """
        CREATE TABLE IF NOT EXISTS notifications.reminders (
            trip_id text PRIMARY KEY,
            departs_at timestamptz NOT NULL,
            sent_at timestamptz NOT NULL DEFAULT now(),
            send_count integer NOT NULL DEFAULT 1
        )
        """,
    ):
        await conn.execute(text(statement))


@loyalty.handles(AwardPoints)
async def award_points(cmd: AwardPoints, ctx: HandlerContext) -> PointsAwarded:
    """Credit the trip's points; the reply carries the customer's balance."""
    await pace()
    await ctx.connection.execute(
        text(
            "INSERT INTO loyalty.awards (trip_id, customer_id, points) "
            "VALUES (:trip_id, :customer_id, :points) ON CONFLICT (trip_id) DO UPDATE "
            "SET award_count = loyalty.awards.award_count + 1"
        ),
        {"trip_id": cmd.trip_id, "customer_id": cmd.customer_id, "points": cmd.points},
    )
    balance = await ctx.connection.scalar(
        text(
            "SELECT coalesce(sum(points * (award_count - revoke_count)), 0) "
            "FROM loyalty.awards WHERE customer_id = :customer_id"
        ),
        {"customer_id": cmd.customer_id},
    )
    return PointsAwarded(balance=int(balance or 0))


@loyalty.handles(RevokePoints)
async def revoke_points(cmd: RevokePoints, ctx: HandlerContext) -> dict[str, Any]:
    """Take the trip's points back (once per award)."""
    await pace()
    result = await ctx.connection.execute(
        text(
            "UPDATE loyalty.awards SET revoke_count = revoke_count + 1 "
            "WHERE trip_id = :trip_id AND revoke_count < award_count"
        ),
        {"trip_id": cmd.trip_id},
    )
    return {"revoked": bool(result.rowcount)}


@loyalty.handles(CloseStatement)
async def close_statement(cmd: CloseStatement, ctx: HandlerContext) -> dict[str, Any]:
    """Close the statement of a nightly tick."""
    await pace()
    await ctx.connection.execute(
        text(
            "INSERT INTO loyalty.statements (at) VALUES (:at) ON CONFLICT (at) DO UPDATE "
            "SET close_count = loyalty.statements.close_count + 1"
        ),
        {"at": cmd.at},
    )
    return {"closed": cmd.at.isoformat()}


@notifications.handles(RemindTraveller)
async def remind_traveller(cmd: RemindTraveller, ctx: HandlerContext) -> dict[str, Any]:
    """Remind the traveller (recorded with the time it was sent)."""
    await pace()
    await ctx.connection.execute(
        text(
            "INSERT INTO notifications.reminders (trip_id, departs_at) "
            "VALUES (:trip_id, :departs_at) ON CONFLICT (trip_id) DO UPDATE "
            "SET send_count = notifications.reminders.send_count + 1"
        ),
        {"trip_id": cmd.trip_id, "departs_at": cmd.departs_at},
    )
    return {"reminded": cmd.trip_id}
