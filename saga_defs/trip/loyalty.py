"""The loyalty sagas: award a trip's points (the trip saga's child), revoke them (the child's
undo: a COMPLETED saga is settled, so undoing it is another saga), and close the points
statement every night (a scheduled saga)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from coordinator.core.definition import RetryPolicy, SagaDefinition, Step
from coordinator.core.schedule import Schedule
from saga_defs.trip.contracts import AwardPoints, CloseStatement, RevokePoints

__all__ = [
    "LoyaltyAwardSaga",
    "LoyaltyRevokeSaga",
    "LoyaltyStatementSaga",
    "PointsData",
    "StatementData",
]


class PointsData(BaseModel):
    """A trip's points for a customer."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    trip_id: str = Field(min_length=1, max_length=100)
    customer_id: str = Field(min_length=1, max_length=100)
    points: int = Field(gt=0)
    balance: int | None = None


class LoyaltyAwardSaga(SagaDefinition[PointsData]):
    """Credit the points; started by the trip saga as its ``award_points`` child."""

    name = "loyalty_award"
    version = 1
    data_model = PointsData
    search_keys = ("trip_id",)
    steps = (
        Step[PointsData](
            name="award",
            service="loyalty",
            command=AwardPoints,
            build=lambda d: AwardPoints(
                trip_id=d.trip_id, customer_id=d.customer_id, points=d.points
            ),
            on_success=lambda d, r: d.model_copy(update={"balance": r.balance}),
            timeout=timedelta(seconds=30),
        ),
    )


class LoyaltyRevokeSaga(SagaDefinition[PointsData]):
    """Take the points back: how the trip saga undoes a COMPLETED ``loyalty_award``."""

    name = "loyalty_revoke"
    version = 1
    data_model = PointsData
    search_keys = ("trip_id",)
    steps = (
        Step[PointsData](
            name="revoke",
            service="loyalty",
            command=RevokePoints,
            build=lambda d: RevokePoints(
                trip_id=d.trip_id, customer_id=d.customer_id, points=d.points
            ),
            timeout=timedelta(seconds=30),
            retry=RetryPolicy(max_attempts=5),
        ),
    )


class StatementData(BaseModel):
    """The night (its tick, UTC) whose points statement is closed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    at: datetime


class LoyaltyStatementSaga(SagaDefinition[StatementData]):
    """Every night at 02:00 UTC, close the loyalty points statement.

    A missed night (no coordinator ran at 02:00) is closed once when one is back
    (``catch_up="latest"``): the statement covers everything up to its tick anyway.
    """

    name = "loyalty_statement"
    version = 1
    data_model = StatementData
    steps = (
        Step[StatementData](
            name="close_statement",
            service="loyalty",
            command=CloseStatement,
            build=lambda d: CloseStatement(at=d.at),
            timeout=timedelta(seconds=30),
        ),
    )
    schedules: ClassVar[tuple[Schedule[StatementData], ...]] = (
        Schedule(
            "nightly-loyalty-statement",
            "0 2 * * *",
            lambda tick: StatementData(at=tick),
            catch_up="latest",
        ),
    )
