"""Example participants of the order saga, built only on ``service_sdk`` and the order contract.

Each module exposes ``service`` (its :class:`~service_sdk.Service`), ``install(conn)`` (its
own schema and tables) and, where useful, ``seed(conn, ...)``. Their tables count every
effect (``reserve_count``, ``refund_count``, ...), so a command executed twice shows up in
:func:`coordinator.demo.ledger.check_ledger`.
"""

from __future__ import annotations

from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.demo.participants import inventory, payment, shipping
from service_sdk import Service

__all__ = ["PARTICIPANTS", "Participant", "install_all", "inventory", "payment", "shipping"]


class Participant(Protocol):
    """What a participant module provides."""

    service: Service

    async def install(self, conn: AsyncConnection) -> None:
        """Create the participant's schema and tables if they do not exist."""


PARTICIPANTS: dict[str, Participant] = {
    "inventory": inventory,
    "payment": payment,
    "shipping": shipping,
}
"""The participants by service name."""


async def install_all(conn: AsyncConnection) -> None:
    """Create every participant's schema and tables."""
    for participant in PARTICIPANTS.values():
        await participant.install(conn)
