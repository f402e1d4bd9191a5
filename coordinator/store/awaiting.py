"""How a saga's awaited entries and kept signals are stored: JSONB arrays of objects.

``saga_instance.awaiting`` holds every :class:`~coordinator.core.state.Awaited` of a saga (the
scalar columns ``current_step`` ... ``deadline_at`` keep the one due first, for the deadline
scanner's index and for readers that show one step); ``pending_signals`` the signals kept for
a wait ahead. Timestamps are ISO 8601 with their offset.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from coordinator.core.state import Awaited, AwaitKind, PendingSignal

__all__ = ["awaiting_from_json", "awaiting_to_json", "signals_from_json", "signals_to_json"]


def _iso(value: datetime | None, name: str) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got {value!r}")
    return value.isoformat()


def _time(value: Any) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def awaiting_to_json(entries: tuple[Awaited, ...]) -> list[dict[str, Any]]:
    """The JSON value of the ``awaiting`` column."""
    return [
        {
            "step": e.step,
            "command_id": e.command_id,
            "attempt": e.attempt,
            "deadline_at": _iso(e.deadline_at, "deadline_at"),
            "service": e.service,
            "picked_up_at": _iso(e.picked_up_at, "picked_up_at"),
            "kind": e.kind.value,
            "compensates": e.compensates,
        }
        for e in entries
    ]


def awaiting_from_json(value: Any) -> tuple[Awaited, ...]:
    """The entries stored in the ``awaiting`` column (empty for rows older than it)."""
    return tuple(
        Awaited(
            step=item["step"],
            command_id=item["command_id"],
            attempt=item["attempt"],
            deadline_at=_time(item.get("deadline_at")),
            service=item.get("service"),
            picked_up_at=_time(item.get("picked_up_at")),
            kind=AwaitKind(item.get("kind", AwaitKind.FORWARD.value)),
            compensates=item.get("compensates"),
        )
        for item in value or ()
    )


def signals_to_json(signals: tuple[PendingSignal, ...]) -> list[dict[str, Any]]:
    """The JSON value of the ``pending_signals`` column."""
    return [{"message_id": s.message_id, "name": s.name, "payload": s.payload} for s in signals]


def signals_from_json(value: Any) -> tuple[PendingSignal, ...]:
    """The signals stored in the ``pending_signals`` column."""
    return tuple(
        PendingSignal(item["message_id"], item["name"], dict(item.get("payload") or {}))
        for item in value or ()
    )
