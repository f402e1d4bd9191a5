"""The trip saga: every shape at once.

1. ``book_travel``: flight, hotel and car booked in parallel (each undone by a cancel);
2. ``fraud_check``: only for trips above :data:`FRAUD_CHECK_ABOVE_CENTS`;
3. ``manager_approval``: waits for the ``approval`` signal, only above
   :data:`APPROVAL_ABOVE_CENTS` (no approval within 48 hours: the trip is unwound);
4. ``award_points``: the ``loyalty_award`` child saga, undone by a ``loyalty_revoke`` saga;
5. ``issue_tickets``: refused when the traveller's papers fail (everything above is undone);
6. ``reminder_timer``: a durable timer until ``remind_before_s`` before departure;
7. ``remind_traveller``.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field

from coordinator.core.definition import (
    ChildCompensation,
    ChildSaga,
    Compensation,
    Parallel,
    SagaDefinition,
    Step,
    Timer,
    WaitForSignal,
)
from saga_defs.trip.contracts import (
    BookFlight,
    BookHotel,
    CancelCar,
    CancelFlight,
    CancelHotel,
    CheckFraud,
    IssueTickets,
    RemindTraveller,
    RentCar,
)
from saga_defs.trip.loyalty import PointsData

__all__ = [
    "APPROVAL_ABOVE_CENTS",
    "FRAUD_CHECK_ABOVE_CENTS",
    "Approval",
    "TripData",
    "TripSaga",
    "points_for",
]

FRAUD_CHECK_ABOVE_CENTS = 150_000
"""Trips above 1,500.00 are screened for fraud."""
APPROVAL_ABOVE_CENTS = 500_000
"""Trips above 5,000.00 wait for a manager's approval."""
CENTS_PER_POINT = 1_000


class TripData(BaseModel):
    """The trip saga's data: the trip, then what each stage reported."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    trip_id: str = Field(min_length=1, max_length=100)
    customer_id: str = Field(min_length=1, max_length=100)
    origin: str = Field(min_length=3, max_length=3)
    destination: str = Field(min_length=3, max_length=3)
    departs_at: datetime
    nights: int = Field(gt=0, le=60)
    amount_cents: int = Field(gt=0)
    remind_before_s: int = Field(default=86_400, ge=0)
    flight_ref: str | None = None
    hotel_ref: str | None = None
    car_ref: str | None = None
    fraud_score: int | None = None
    approved_by: str | None = None
    points: int | None = None
    ticket_ref: str | None = None


class Approval(BaseModel):
    """The payload of the ``approval`` signal."""

    model_config = ConfigDict(extra="forbid")

    approved_by: str = Field(min_length=1, max_length=100)
    note: str = Field(default="", max_length=500)


def points_for(amount_cents: int) -> int:
    """The loyalty points a trip earns (at least one)."""
    return max(amount_cents // CENTS_PER_POINT, 1)


def _points(d: TripData) -> PointsData:
    return PointsData(
        trip_id=d.trip_id, customer_id=d.customer_id, points=points_for(d.amount_cents)
    )


def _remind_at(d: TripData) -> datetime:
    return d.departs_at - timedelta(seconds=d.remind_before_s)


class TripSaga(SagaDefinition[TripData]):
    """Book a trip: parallel bookings, conditional fraud check and approval, a loyalty
    child saga, tickets, and a reminder timer before departure."""

    name = "trip"
    version = 1
    data_model = TripData
    search_keys = ("trip_id", "customer_id")
    steps = (
        Parallel[TripData](
            name="book_travel",
            steps=(
                Step[TripData](
                    name="book_flight",
                    service="flights",
                    command=BookFlight,
                    build=lambda d: BookFlight(
                        trip_id=d.trip_id,
                        customer_id=d.customer_id,
                        origin=d.origin,
                        destination=d.destination,
                        departs_at=d.departs_at,
                    ),
                    on_success=lambda d, r: d.model_copy(update={"flight_ref": r.booking_ref}),
                    compensation=Compensation[TripData](
                        CancelFlight, lambda d: CancelFlight(trip_id=d.trip_id)
                    ),
                ),
                Step[TripData](
                    name="book_hotel",
                    service="hotels",
                    command=BookHotel,
                    build=lambda d: BookHotel(
                        trip_id=d.trip_id, city=d.destination, nights=d.nights
                    ),
                    on_success=lambda d, r: d.model_copy(update={"hotel_ref": r.booking_ref}),
                    compensation=Compensation[TripData](
                        CancelHotel, lambda d: CancelHotel(trip_id=d.trip_id)
                    ),
                ),
                Step[TripData](
                    name="rent_car",
                    service="cars",
                    command=RentCar,
                    build=lambda d: RentCar(trip_id=d.trip_id, city=d.destination, days=d.nights),
                    on_success=lambda d, r: d.model_copy(update={"car_ref": r.rental_ref}),
                    compensation=Compensation[TripData](
                        CancelCar, lambda d: CancelCar(trip_id=d.trip_id)
                    ),
                ),
            ),
        ),
        Step[TripData](
            name="fraud_check",
            service="fraud",
            command=CheckFraud,
            build=lambda d: CheckFraud(
                trip_id=d.trip_id, customer_id=d.customer_id, amount_cents=d.amount_cents
            ),
            on_success=lambda d, r: d.model_copy(update={"fraud_score": r.score}),
            run_if=lambda d: d.amount_cents > FRAUD_CHECK_ABOVE_CENTS,
        ),
        WaitForSignal[TripData](
            name="manager_approval",
            signal="approval",
            timeout=timedelta(hours=48),
            payload_model=Approval,
            on_signal=lambda d, a: d.model_copy(update={"approved_by": a.approved_by}),
            run_if=lambda d: d.amount_cents > APPROVAL_ABOVE_CENTS,
        ),
        ChildSaga[TripData](
            name="award_points",
            saga_type="loyalty_award",
            build=_points,
            on_success=lambda d, child: d.model_copy(update={"points": child["points"]}),
            compensation=ChildCompensation[TripData]("loyalty_revoke", _points),
            timeout=timedelta(minutes=5),
        ),
        Step[TripData](
            name="issue_tickets",
            service="tickets",
            command=IssueTickets,
            build=lambda d: IssueTickets(trip_id=d.trip_id, customer_id=d.customer_id),
            on_success=lambda d, r: d.model_copy(update={"ticket_ref": r.ticket_ref}),
        ),
        Timer[TripData](name="reminder_timer", until=_remind_at),
        Step[TripData](
            name="remind_traveller",
            service="notifications",
            command=RemindTraveller,
            build=lambda d: RemindTraveller(
                trip_id=d.trip_id, customer_id=d.customer_id, departs_at=d.departs_at
            ),
        ),
    )
