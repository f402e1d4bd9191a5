"""The trip demo's ledger check: do the trip participants' own tables agree with how each trip
saga ended, and with what the plan said would happen to it?

Like :mod:`coordinator.demo.ledger` it reads only the participants' tables (never the
coordinator's): every booking, check, award, ticket and reminder took effect exactly once, and
every compensation undid its step exactly once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.demo.ledger import LedgerReport, _Problems
from saga_defs.trip import FRAUD_CHECK_ABOVE_CENTS, points_for

__all__ = ["DESKS", "PlannedTrip", "check_trip_ledger"]

DESKS = ("flights", "hotels", "cars")

Fate = Literal["ok", "sold_out", "flagged", "no_papers"]


@dataclass(frozen=True)
class PlannedTrip:
    """A trip as the demo planned it: its amount, and what was set up to happen to it.

    Attributes:
        fate: ``ok`` (completes), ``sold_out`` (refused by ``sold_out_at``), ``flagged``
            (refused by the fraud check) or ``no_papers`` (refused at the tickets, after the
            loyalty points were awarded: they are revoked).
    """

    trip_id: str
    customer_id: str
    amount_cents: int
    fate: Fate = "ok"
    sold_out_at: str | None = None

    @property
    def expected(self) -> Literal["COMPLETED", "COMPENSATED"]:
        """How its saga should end."""
        return "COMPLETED" if self.fate == "ok" else "COMPENSATED"

    @property
    def screened(self) -> bool:
        """Whether the fraud check runs for it (``run_if`` above the threshold)."""
        return self.amount_cents > FRAUD_CHECK_ABOVE_CENTS


async def _rows(conn: AsyncConnection, sql: str, ids: Sequence[str]) -> dict[str, Any]:
    # Only this run's trips: a shared database may hold earlier runs' rows.
    rows = await conn.execute(text(f"{sql} WHERE trip_id = ANY(:ids)"), {"ids": list(ids)})
    return {row.trip_id: row for row in rows}


async def check_trip_ledger(
    conn: AsyncConnection,
    outcomes: Mapping[str, str],
    planned: Mapping[str, PlannedTrip],
    remind_at: Mapping[str, datetime],
    statements_since: datetime | None = None,
) -> LedgerReport:
    """Check the trip participants' tables against the sagas' outcomes and the plan.

    A COMPLETED trip has its three bookings booked once and never cancelled, one fraud check
    exactly when it was above the threshold (none below: the step was skipped), its points
    awarded once and never revoked, tickets issued once, and one reminder sent no earlier
    than the timer allowed. A COMPENSATED trip has each booking it made cancelled exactly
    once, no booking at the desk that refused it, its points revoked exactly once if they
    were awarded, no tickets and no reminder. Every trip ends as planned. Every nightly
    statement closed since ``statements_since`` was closed once.

    Args:
        outcomes: Each trip saga's status, by trip id (absent: not started).
        planned: Each trip as planned, by trip id.
        remind_at: When each trip's reminder timer was due, by trip id.
    """
    problems = _Problems()
    ids = sorted(planned)
    bookings = {
        desk: await _rows(
            conn, f"SELECT trip_id, status, book_count, cancel_count FROM {desk}.bookings", ids
        )
        for desk in DESKS
    }
    checks = await _rows(conn, "SELECT trip_id, count FROM fraud.checks", ids)
    awards = await _rows(
        conn, "SELECT trip_id, points, award_count, revoke_count FROM loyalty.awards", ids
    )
    tickets = await _rows(conn, "SELECT trip_id, count FROM tickets.issued", ids)
    reminders = await _rows(
        conn, "SELECT trip_id, sent_at, send_count FROM notifications.reminders", ids
    )
    for trip_id, plan in planned.items():
        status = outcomes.get(trip_id)
        if status != plan.expected:
            problems.add(f"{trip_id} ({plan.fate}) ended {status}, expected {plan.expected}")
            continue
        check = checks.get(trip_id)
        award = awards.get(trip_id)
        if status == "COMPLETED":
            for desk in DESKS:
                row = bookings[desk].get(trip_id)
                if row is None or (row.status, row.book_count, row.cancel_count) != (
                    "booked",
                    1,
                    0,
                ):
                    problems.add(f"{trip_id} completed but its {desk} booking is {_show(row)}")
            if plan.screened != (check is not None) or (check is not None and check.count != 1):
                problems.add(
                    f"{trip_id} completed ({plan.amount_cents} cents) with fraud check "
                    f"{_show(check)}"
                )
            want_points = points_for(plan.amount_cents)
            if award is None or (award.points, award.award_count, award.revoke_count) != (
                want_points,
                1,
                0,
            ):
                problems.add(f"{trip_id} completed but its points are {_show(award)}")
            ticket = tickets.get(trip_id)
            if ticket is None or ticket.count != 1:
                problems.add(f"{trip_id} completed but its tickets are {_show(ticket)}")
            reminder = reminders.get(trip_id)
            due = remind_at.get(trip_id)
            if reminder is None or reminder.send_count != 1:
                problems.add(f"{trip_id} completed but its reminder is {_show(reminder)}")
            elif due is not None and reminder.sent_at < due - timedelta(seconds=1):
                # A second's slack: the participant's database clock stamps sent_at.
                problems.add(f"{trip_id} reminded at {reminder.sent_at}, before its timer {due}")
            continue
        for desk in DESKS:
            row = bookings[desk].get(trip_id)
            if desk == plan.sold_out_at:
                if row is not None:
                    problems.add(f"{trip_id}: {desk} refused it yet holds {_show(row)}")
            elif row is not None and (row.status, row.book_count, row.cancel_count) != (
                "cancelled",
                1,
                1,
            ):
                problems.add(f"{trip_id} compensated but its {desk} booking is {_show(row)}")
        if plan.fate == "no_papers":
            if award is None or (award.award_count, award.revoke_count) != (1, 1):
                problems.add(f"{trip_id}: tickets refused, points not revoked once: {_show(award)}")
        elif award is not None:
            problems.add(f"{trip_id} ({plan.fate}) was awarded points: {_show(award)}")
        if plan.fate == "flagged" and check is not None:
            problems.add(f"{trip_id}: refused by the fraud check yet counted {_show(check)}")
        if trip_id in tickets or trip_id in reminders:
            problems.add(f"{trip_id} compensated but has tickets or a reminder")
    if statements_since is not None:
        rows = await conn.execute(
            text("SELECT at, close_count FROM loyalty.statements WHERE at >= :since"),
            {"since": statements_since},
        )
        for row in rows:
            if row.close_count != 1:
                problems.add(f"statement {row.at} closed {row.close_count} times")
    return problems.report()


def _show(row: Any) -> str:
    return "missing" if row is None else str(dict(row._mapping))
