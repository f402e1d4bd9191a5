"""The wire contract of the trip saga and its loyalty sagas: the commands their participants
receive and the data their success replies carry. Participants import this module; it
depends only on the SDK."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from pydantic import BaseModel, Field

from service_sdk.contract import Command

__all__ = [
    "AwardPoints",
    "BookFlight",
    "BookHotel",
    "CancelCar",
    "CancelFlight",
    "CancelHotel",
    "CarRented",
    "CheckFraud",
    "CloseStatement",
    "FlightBooked",
    "FraudCleared",
    "HotelBooked",
    "IssueTickets",
    "PointsAwarded",
    "RemindTraveller",
    "RentCar",
    "RevokePoints",
    "TicketsIssued",
]


class FlightBooked(BaseModel):
    """Flights' success reply to :class:`BookFlight`."""

    booking_ref: str


class BookFlight(Command):
    """Flights: book a seat (refused when the flight is sold out)."""

    message_type: ClassVar[str] = "flights.book"
    reply_model: ClassVar[type[BaseModel] | None] = FlightBooked
    trip_id: str
    customer_id: str
    origin: str
    destination: str
    departs_at: datetime


class CancelFlight(Command):
    """Flights: cancel the trip's booking (compensation of BookFlight)."""

    message_type: ClassVar[str] = "flights.cancel"
    trip_id: str


class HotelBooked(BaseModel):
    """Hotels' success reply to :class:`BookHotel`."""

    booking_ref: str


class BookHotel(Command):
    """Hotels: book a room for the nights of the trip."""

    message_type: ClassVar[str] = "hotels.book"
    reply_model: ClassVar[type[BaseModel] | None] = HotelBooked
    trip_id: str
    city: str
    nights: int = Field(gt=0)


class CancelHotel(Command):
    """Hotels: cancel the trip's room (compensation of BookHotel)."""

    message_type: ClassVar[str] = "hotels.cancel"
    trip_id: str


class CarRented(BaseModel):
    """Cars' success reply to :class:`RentCar`."""

    rental_ref: str


class RentCar(Command):
    """Cars: rent a car at the destination."""

    message_type: ClassVar[str] = "cars.rent"
    reply_model: ClassVar[type[BaseModel] | None] = CarRented
    trip_id: str
    city: str
    days: int = Field(gt=0)


class CancelCar(Command):
    """Cars: cancel the trip's rental (compensation of RentCar)."""

    message_type: ClassVar[str] = "cars.cancel"
    trip_id: str


class FraudCleared(BaseModel):
    """Fraud's success reply to :class:`CheckFraud`."""

    score: int


class CheckFraud(Command):
    """Fraud: screen an expensive trip (refused when it looks fraudulent)."""

    message_type: ClassVar[str] = "fraud.check"
    reply_model: ClassVar[type[BaseModel] | None] = FraudCleared
    trip_id: str
    customer_id: str
    amount_cents: int


class PointsAwarded(BaseModel):
    """Loyalty's success reply to :class:`AwardPoints`."""

    balance: int


class AwardPoints(Command):
    """Loyalty: credit the customer with the trip's points."""

    message_type: ClassVar[str] = "loyalty.award"
    reply_model: ClassVar[type[BaseModel] | None] = PointsAwarded
    trip_id: str
    customer_id: str
    points: int = Field(gt=0)


class RevokePoints(Command):
    """Loyalty: take back the points a trip was awarded (its undo saga's only step)."""

    message_type: ClassVar[str] = "loyalty.revoke"
    trip_id: str
    customer_id: str
    points: int = Field(gt=0)


class CloseStatement(Command):
    """Loyalty: close the points statement of a night (the nightly scheduled saga)."""

    message_type: ClassVar[str] = "loyalty.close_statement"
    at: datetime


class TicketsIssued(BaseModel):
    """Tickets' success reply to :class:`IssueTickets`."""

    ticket_ref: str


class IssueTickets(Command):
    """Tickets: issue the travel documents (refused when the traveller's papers fail)."""

    message_type: ClassVar[str] = "tickets.issue"
    reply_model: ClassVar[type[BaseModel] | None] = TicketsIssued
    trip_id: str
    customer_id: str


class RemindTraveller(Command):
    """Notifications: remind the traveller of the trip (sent by a timer before departure)."""

    message_type: ClassVar[str] = "notifications.remind"
    trip_id: str
    customer_id: str
    departs_at: datetime
