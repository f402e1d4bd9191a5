"""What the HTTP API and the console need for schedules: the :class:`ScheduleBackend` protocol.

A running coordinator passes its :class:`coordinator.ops.schedules.ScheduleAdmin`.
"""

from __future__ import annotations

from typing import Protocol

from coordinator.ops.schedules import ScheduleView
from coordinator.store.schedules import FiredTick

__all__ = ["ScheduleBackend"]


class ScheduleBackend(Protocol):
    """Lists, pauses and resumes schedules."""

    async def list_schedules(self) -> list[ScheduleView]:
        """Every schedule any coordinator declared, by name."""
        ...

    async def show(self, name: str) -> tuple[ScheduleView, list[FiredTick]]:
        """One schedule and its newest fired ticks.

        Raises:
            ScheduleNotFoundError: No schedule has this name.
        """
        ...

    async def pause(self, name: str, *, actor: str, reason: str) -> ScheduleView:
        """Stop firing the schedule on every coordinator.

        Raises:
            ScheduleNotFoundError: No schedule has this name.
        """
        ...

    async def resume(self, name: str, *, actor: str, reason: str | None = None) -> ScheduleView:
        """Fire the schedule again from its next tick on.

        Raises:
            ScheduleNotFoundError: No schedule has this name.
        """
        ...
