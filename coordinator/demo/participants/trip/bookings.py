"""The flights, hotels and cars participants of the trip saga: one booking per trip each,
cancelled on compensation.

Each has its own schema (``flights``, ``hotels``, ``cars``) with ``bookings`` (one row per
trip, with how often it was booked and cancelled, so a double execution is visible) and
``sold_out`` (trips it refuses: the demo seeds them).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.demo.participants.pace import pace
from saga_defs.trip.contracts import (
    BookFlight,
    BookHotel,
    CancelCar,
    CancelFlight,
    CancelHotel,
    CarRented,
    FlightBooked,
    HotelBooked,
    RentCar,
)
from service_sdk import Command, CommandRejected, HandlerContext, Service

__all__ = ["BookingDesk", "cars", "flights", "hotels"]


class BookingDesk:
    """A participant that books one thing per trip and cancels it (flights, hotels, cars)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.service = Service(name, schema=name)

    async def install(self, conn: AsyncConnection) -> None:
        """Create the schema and its tables if they do not exist."""
        for statement in (
            f"CREATE SCHEMA IF NOT EXISTS {self.name}",
            f"""
            CREATE TABLE IF NOT EXISTS {self.name}.bookings (
                trip_id text PRIMARY KEY,
                status text NOT NULL CHECK (status IN ('booked', 'cancelled')),
                book_count integer NOT NULL DEFAULT 1,
                cancel_count integer NOT NULL DEFAULT 0
            )
            """,
            f"CREATE TABLE IF NOT EXISTS {self.name}.sold_out (trip_id text PRIMARY KEY)",
        ):
            await conn.execute(text(statement))

    async def seed(self, conn: AsyncConnection, sold_out: Iterable[str]) -> None:
        """Refuse these trips (no seat, no room, no car left)."""
        rows = [{"trip_id": t} for t in sold_out]
        if rows:
            await conn.execute(
                text(f"INSERT INTO {self.name}.sold_out VALUES (:trip_id) ON CONFLICT DO NOTHING"),
                rows,
            )

    async def book(self, trip_id: str, ctx: HandlerContext) -> str:
        """Book for the trip (a second booking is counted, not refused: the SDK is what
        prevents double execution, and the ledger must see it if it ever fails)."""
        await pace()
        refused = await ctx.connection.execute(
            text(f"SELECT 1 FROM {self.name}.sold_out WHERE trip_id = :trip_id"),
            {"trip_id": trip_id},
        )
        if refused.first():
            raise CommandRejected(f"{self.name}: sold out", data={"trip_id": trip_id})
        await ctx.connection.execute(
            text(
                f"INSERT INTO {self.name}.bookings (trip_id, status) VALUES (:trip_id, 'booked') "
                f"ON CONFLICT (trip_id) DO UPDATE SET book_count = "
                f"{self.name}.bookings.book_count + 1, status = 'booked'"
            ),
            {"trip_id": trip_id},
        )
        return f"{self.name[:3]}-{trip_id}"

    async def cancel(self, trip_id: str, ctx: HandlerContext) -> dict[str, Any]:
        """Cancel the trip's booking; nothing to do (and success) without one."""
        await pace()
        result = await ctx.connection.execute(
            text(
                f"UPDATE {self.name}.bookings "
                "SET status = 'cancelled', cancel_count = cancel_count + 1 "
                "WHERE trip_id = :trip_id AND status = 'booked'"
            ),
            {"trip_id": trip_id},
        )
        return {"cancelled": bool(result.rowcount)}

    def handles(
        self,
        book: type[Command],
        cancel: type[Command],
        reply: type[BaseModel],
        field: str,
    ) -> None:
        """Register the book and cancel handlers for the commands of this desk."""

        async def on_book(cmd: Any, ctx: HandlerContext) -> BaseModel:
            return reply.model_validate({field: await self.book(cmd.trip_id, ctx)})

        async def on_cancel(cmd: Any, ctx: HandlerContext) -> dict[str, Any]:
            return await self.cancel(cmd.trip_id, ctx)

        self.service.handles(book)(on_book)
        self.service.handles(cancel)(on_cancel)


flights = BookingDesk("flights")
flights.handles(BookFlight, CancelFlight, FlightBooked, "booking_ref")
hotels = BookingDesk("hotels")
hotels.handles(BookHotel, CancelHotel, HotelBooked, "booking_ref")
cars = BookingDesk("cars")
cars.handles(RentCar, CancelCar, CarRented, "rental_ref")
