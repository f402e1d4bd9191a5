"""What the HTTP API accepts: saga ids, text parameters, numeric bounds and saga data.

Every string the API takes goes through one of these checks, so nothing reaches PostgreSQL
(whose ``text`` and ``jsonb`` cannot hold NUL), the logs or a terminal with control characters:

- **New saga ids** (``?saga_id=``, ``Idempotency-Key``) match :data:`SAGA_ID_PATTERN`: letters,
  digits and ``. _ : @ -``, 1 to 200 of them. No ``/``, spaces, newlines or bidi controls.
- **Lookups and filters** (``/sagas/{saga_id}``, ``saga_type``) and **free text** (an action's
  reason and actor) may hold any printable character, but no control character (C0, DEL,
  C1), no bidi control and no lone surrogate: ids of sagas started over Kafka may use more than
  the new-id alphabet, and stay addressable.
- **Saga data** (a start's body) may nest :data:`MAX_DATA_DEPTH` deep; its keys and strings may
  hold tab, line feed and carriage return but no other control character and no lone
  surrogate; its numbers are finite.

A failed check is a 422 like any other validation error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import AfterValidator

__all__ = [
    "MAX_DATA_DEPTH",
    "MAX_ID_LENGTH",
    "MAX_LIST_LIMIT",
    "MAX_OFFSET",
    "SAGA_ID_PATTERN",
    "CleanText",
    "SagaData",
    "check_saga_data",
    "check_text",
]

MAX_ID_LENGTH = 200
"""The envelope's limit on saga ids and types."""

SAGA_ID_PATTERN = r"^[A-Za-z0-9._:@-]{1,200}$"
"""The alphabet of saga ids the API creates (pydantic's regex: ``$`` is the end of the text)."""

MAX_LIST_LIMIT = 1_000
"""The largest page of ``GET /sagas``."""

MAX_OFFSET = 1_000_000
"""The deepest ``offset`` of ``GET /sagas``: deeper pages cost a scan; filter instead."""

MAX_DATA_DEPTH = 32
"""How deeply a saga's data may nest (objects and arrays)."""

# Bidi embeddings, overrides, isolates and marks: they make text display other than it reads.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_DATA_WHITESPACE = frozenset("\t\n\r")


def _bad_char(text: str, *, allowed: frozenset[str] = frozenset()) -> str | None:
    """The first character ``text`` may not hold, or None."""
    for char in text:
        code = ord(char)
        if char in allowed:
            continue
        if code < 0x20 or 0x7F <= code <= 0x9F or 0xD800 <= code <= 0xDFFF or char in _BIDI:
            return char
    return None


def _describe(char: str) -> str:
    return f"U+{ord(char):04X}"


def check_text(value: str) -> str:
    """A parameter or free text: no control, bidi or surrogate characters.

    Raises:
        ValueError: ``value`` holds one (pydantic makes it a 422).
    """
    bad = _bad_char(value, allowed=frozenset())
    if bad is not None:
        raise ValueError(f"must not contain control characters (found {_describe(bad)})")
    return value


CleanText = Annotated[str, AfterValidator(check_text)]
"""A string without control, bidi or surrogate characters."""


def _where(path: tuple[str | int, ...]) -> str:
    return ".".join(str(part) for part in path) or "body"


def check_saga_data(value: dict[str, Any]) -> dict[str, Any]:
    """A start's body: bounded depth, clean keys and strings, finite numbers.

    Walks the document without recursion, so a deeply nested body costs no stack.

    Raises:
        ValueError: What is wrong and where, e.g. ``items.3.sku: must not contain ...``.
    """
    pending: list[tuple[tuple[str | int, ...], Any]] = [((), value)]
    while pending:
        path, node = pending.pop()
        if len(path) > MAX_DATA_DEPTH:
            raise ValueError(f"nested deeper than {MAX_DATA_DEPTH} levels at {_where(path)}")
        if isinstance(node, Mapping):
            for key, child in node.items():
                bad = _bad_char(str(key), allowed=_DATA_WHITESPACE)
                if bad is not None:
                    raise ValueError(
                        f"a key in {_where(path)} contains a control character ({_describe(bad)})"
                    )
                pending.append(((*path, str(key)), child))
        elif isinstance(node, list | tuple):
            pending.extend(((*path, index), child) for index, child in enumerate(node))
        elif isinstance(node, str):
            bad = _bad_char(node, allowed=_DATA_WHITESPACE)
            if bad is not None:
                raise ValueError(
                    f"{_where(path)}: must not contain control characters (found "
                    f"{_describe(bad)}; tab, line feed and carriage return are allowed)"
                )
        elif isinstance(node, float) and not math.isfinite(node):
            raise ValueError(f"{_where(path)}: numbers must be finite")
    return value


SagaData = Annotated[dict[str, Any], AfterValidator(check_saga_data)]
"""A start's body, checked by :func:`check_saga_data`."""
