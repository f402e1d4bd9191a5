"""Whether a repeated start (same saga id) carries the same data as the first one.

Starting is idempotent per saga id: the first start wins. A repeat with the same data is a
retry and changes nothing; a repeat with different data would silently lose that data, so it
is refused (a ``conflicting_start`` dead letter on Kafka, 409 over HTTP). The repeat is
compared with the data the saga *started with* (recorded in its history; later steps may add
to the saga's data): every field the repeat gives must be recorded with the same value, and
fields it leaves out may have been filled in by the model's defaults. A value the model may
have coerced (``"5"`` for ``5``, a timestamp in another offset, surrounding spaces) still
counts as the same.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

__all__ = ["START_KINDS", "starts_alike"]

START_KINDS = ("started", "queued")
"""The history kinds whose ``data`` detail is the data a saga started with."""


def starts_alike(recorded: Any, given: Any) -> bool:
    """True when ``given`` (a start's body) is what produced ``recorded`` (the saga's data)."""
    if isinstance(given, Mapping):
        return isinstance(recorded, Mapping) and all(
            key in recorded and starts_alike(recorded[key], value) for key, value in given.items()
        )
    if isinstance(given, Sequence) and not isinstance(given, str):
        return (
            isinstance(recorded, Sequence)
            and not isinstance(recorded, str)
            and len(recorded) == len(given)
            and all(starts_alike(r, g) for r, g in zip(recorded, given, strict=True))
        )
    return _same_scalar(recorded, given)


_TRUE = frozenset({"true", "1", "yes", "on", "t", "y"})
_FALSE = frozenset({"false", "0", "no", "off", "f", "n"})


def _same_scalar(recorded: Any, given: Any) -> bool:
    if isinstance(recorded, bool) or isinstance(given, bool):
        # True == 1 in Python, so booleans are compared apart; pydantic reads "yes" as True.
        if isinstance(given, bool) or not isinstance(recorded, bool):
            return recorded is given
        return str(given).strip().lower() in (_TRUE if recorded else _FALSE)
    if recorded == given:
        return True
    if isinstance(recorded, str) and isinstance(given, str):
        return recorded.strip() == given.strip() or _same_instant(recorded, given)
    number, text = (recorded, given) if isinstance(given, str) else (given, recorded)
    if isinstance(number, int | float) and isinstance(text, str):
        try:
            return float(text.strip()) == float(number)
        except ValueError:
            return False
    return False


def _same_instant(a: str, b: str) -> bool:
    try:
        # An aware and a naive timestamp are never equal (no exception): not the same value.
        return datetime.fromisoformat(a.strip()) == datetime.fromisoformat(b.strip())
    except ValueError:
        return False
