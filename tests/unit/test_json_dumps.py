"""The store's JSON writer: orjson's speed, the standard library's output and refusals."""

from __future__ import annotations

import json
import math
from enum import StrEnum
from typing import Any

import pytest
from hypothesis import given

from coordinator.store.database import json_dumps
from tests.garbage import json_values


def _stdlib(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


class Currency(StrEnum):
    EUR = "EUR"


@given(json_values)
def test_writes_what_the_standard_library_writes_or_refuses_alike(value: Any) -> None:
    try:
        expected = _stdlib(value)
    except ValueError:  # infinity
        with pytest.raises(ValueError, match="JSON compliant"):
            json_dumps(value)
        return
    assert json.loads(json_dumps(value)) == json.loads(expected)


@pytest.mark.parametrize(
    "value",
    [
        {"order": "o-1", "items": [{"sku": "é", "quantity": 2}], "amount_cents": 4_500},
        {"charge_id": None, "nested": {"n": [1, None, 2.5]}},
        {1: "integer key", "2": [True, False]},
        {"big": 2**70, "negative": -(2**65)},
        {"currency": Currency.EUR},
        "\ud800",
        [],
    ],
    ids=["plain", "nulls", "int-key", "big-int", "str-enum", "lone-surrogate", "empty"],
)
def test_the_same_text_as_the_standard_library(value: Any) -> None:
    assert json_dumps(value) == _stdlib(value)


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_are_refused_not_written_as_null(number: float) -> None:
    with pytest.raises(ValueError, match="JSON compliant"):
        json_dumps({"data": {"ratio": number}})


def test_a_value_json_has_no_form_for_is_refused() -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        json_dumps({"at": object()})
