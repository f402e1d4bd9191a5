"""Business keys: the fields of a saga's data that operators search by (``order_id=A-17``).

A definition names them in ``search_keys``; at start their values are stored with the saga as
``name=value`` strings in an indexed array column, so ``saga list --key order_id=A-17``, the
API and the console find a saga by what the business calls it, not by its saga id.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["MAX_KEY_VALUE_LENGTH", "business_key", "business_keys", "parse_business_key"]

MAX_KEY_VALUE_LENGTH = 200
"""Longer values are cut: a key is for finding a saga, and index entries must stay small."""


def business_key(name: str, value: Any) -> str:
    """The stored form of one key: ``name=value`` (numbers and booleans as JSON writes them)."""
    text = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return f"{name}={text[:MAX_KEY_VALUE_LENGTH]}"


def business_keys(names: Iterable[str], data: Mapping[str, Any]) -> tuple[str, ...]:
    """The keys of ``data``: each named field that holds a scalar (absent or null: none)."""
    keys = []
    for name in names:
        value = data.get(name)
        if isinstance(value, str | int | float | bool):
            keys.append(business_key(name, value))
    return tuple(keys)


def parse_business_key(text: str) -> str:
    """Check a search given as ``name=value`` and return its stored form.

    Raises:
        ValueError: No ``=``, or an empty name or value.
    """
    name, sep, value = text.partition("=")
    name, value = name.strip(), value.strip()
    if not sep or not name or not value:
        raise ValueError(f"a business key is name=value (e.g. order_id=A-17), got {text!r}")
    return business_key(name, value)
