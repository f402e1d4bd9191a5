"""The fraud and tickets participants of the trip saga: each may refuse a trip.

``fraud`` (schema ``fraud``): ``flagged`` customers are refused; ``checks`` counts each
screening. ``tickets`` (schema ``tickets``): customers whose papers fail (``papers_invalid``)
are refused; ``issued`` counts each issue. Neither has a compensation: a refusal leaves
nothing behind, and tickets are the last step that can fail.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.demo.participants.pace import pace
from saga_defs.trip.contracts import CheckFraud, FraudCleared, IssueTickets, TicketsIssued
from service_sdk import CommandRejected, HandlerContext, Service

__all__ = ["fraud", "tickets"]


class _Check:
    """What a participant that screens customers has in common."""

    def __init__(self, name: str, refused: str, counted: str) -> None:
        self.service = Service(name, schema=name)
        self.name, self.refused, self.counted = name, refused, counted

    async def install(self, conn: AsyncConnection) -> None:
        """Create the schema and its tables if they do not exist."""
        for statement in (
            f"CREATE SCHEMA IF NOT EXISTS {self.name}",
            f"CREATE TABLE IF NOT EXISTS {self.name}.{self.refused} (customer_id text PRIMARY KEY)",
            f"""
            CREATE TABLE IF NOT EXISTS {self.name}.{self.counted} (
                trip_id text PRIMARY KEY,
                customer_id text NOT NULL,
                count integer NOT NULL DEFAULT 1
            )
            """,
        ):
            await conn.execute(text(statement))

    async def seed(self, conn: AsyncConnection, customers: Iterable[str]) -> None:
        """Refuse these customers."""
        rows = [{"c": c} for c in customers]
        if rows:
            await conn.execute(
                text(f"INSERT INTO {self.name}.{self.refused} VALUES (:c) ON CONFLICT DO NOTHING"),
                rows,
            )

    async def screen(self, trip_id: str, customer_id: str, ctx: HandlerContext) -> None:
        """Refuse a refused customer; count the trip otherwise."""
        await pace()
        found = await ctx.connection.execute(
            text(f"SELECT 1 FROM {self.name}.{self.refused} WHERE customer_id = :c"),
            {"c": customer_id},
        )
        if found.first():
            raise CommandRejected(f"{self.name}: refused", data={"customer_id": customer_id})
        await ctx.connection.execute(
            text(
                f"INSERT INTO {self.name}.{self.counted} (trip_id, customer_id) "
                "VALUES (:trip_id, :c) ON CONFLICT (trip_id) DO UPDATE "
                f"SET count = {self.name}.{self.counted}.count + 1"
            ),
            {"trip_id": trip_id, "c": customer_id},
        )


fraud = _Check("fraud", "flagged", "checks")
tickets = _Check("tickets", "papers_invalid", "issued")


@fraud.service.handles(CheckFraud)
async def check_fraud(cmd: CheckFraud, ctx: HandlerContext) -> FraudCleared:
    """Screen an expensive trip."""
    await fraud.screen(cmd.trip_id, cmd.customer_id, ctx)
    return FraudCleared(score=len(cmd.customer_id) % 10)


@tickets.service.handles(IssueTickets)
async def issue_tickets(cmd: IssueTickets, ctx: HandlerContext) -> TicketsIssued:
    """Issue the travel documents."""
    await tickets.screen(cmd.trip_id, cmd.customer_id, ctx)
    return TicketsIssued(ticket_ref=f"tkt-{cmd.trip_id}")
