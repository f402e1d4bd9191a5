"""Example participants of the trip saga (``saga_defs.trip``), built only on ``service_sdk``
and the trip contract: flights, hotels and cars (:mod:`.bookings`), fraud and tickets
(:mod:`.checks`), loyalty and notifications (:mod:`.loyalty`).

Each provides ``service`` and ``install(conn)`` like the order saga's participants.
``saga participant trip`` runs all seven in one process (one runner and consumer group per
service), so the demo needs one process for them, not seven.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.demo.participants import Participant
from coordinator.demo.participants.trip import bookings, checks, loyalty
from service_sdk import Service

__all__ = ["TRIP_PARTICIPANTS", "bookings", "checks", "install_all", "loyalty"]


class _Desk:
    def __init__(
        self, service: Service, install: Callable[[AsyncConnection], Awaitable[None]]
    ) -> None:
        self.service = service
        self._install = install

    async def install(self, conn: AsyncConnection) -> None:
        """Create the participant's schema and tables if they do not exist."""
        await self._install(conn)


TRIP_PARTICIPANTS: dict[str, Participant] = {
    "flights": bookings.flights,
    "hotels": bookings.hotels,
    "cars": bookings.cars,
    "fraud": checks.fraud,
    "tickets": checks.tickets,
    "loyalty": _Desk(loyalty.loyalty, loyalty.install_loyalty),
    "notifications": _Desk(loyalty.notifications, loyalty.install_notifications),
}
"""The trip saga's participants by service name."""


async def install_all(conn: AsyncConnection) -> None:
    """Create every trip participant's schema and tables."""
    for participant in TRIP_PARTICIPANTS.values():
        await participant.install(conn)
