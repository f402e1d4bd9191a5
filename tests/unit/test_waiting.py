"""The suite's one polling helper: ``eventually`` returns as soon as a fact holds, and fails
with what it last saw."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

import pytest

from tests.support.waiting import eventually


async def test_returns_the_first_truthy_value_of_a_sync_condition() -> None:
    values: Iterator[object] = iter([0, None, [], "ready"])
    assert await eventually(lambda: next(values), interval=0) == "ready"


async def test_awaits_an_async_condition_and_retries_on_assertion_errors() -> None:
    calls = 0

    async def third_time() -> int:
        nonlocal calls
        calls += 1
        assert calls >= 3, f"only {calls} call(s)"
        return calls

    assert await eventually(third_time, interval=0) == 3


async def test_a_timeout_names_the_condition_and_its_last_value() -> None:
    def never() -> int:
        return 0

    with pytest.raises(
        AssertionError, match=r"timed out after 0\.05 s waiting for .*never.*last value: 0"
    ):
        await eventually(never, timeout=0.05, interval=0.01)


async def test_a_timeout_reports_the_last_assertion_error() -> None:
    def not_yet() -> None:
        raise AssertionError("2 of 3 records")

    with pytest.raises(AssertionError, match=r"waiting for three records .*2 of 3 records") as info:
        await eventually(not_yet, timeout=0.05, interval=0.01, what="three records")
    assert isinstance(info.value.__cause__, AssertionError)


async def test_a_call_still_running_at_the_timeout_is_cancelled() -> None:
    async def hangs() -> bool:
        await asyncio.Event().wait()
        return True

    with pytest.raises(AssertionError, match=re.escape("(1 call(s))")):
        await eventually(hangs, timeout=0.05)


async def test_other_errors_propagate_at_once() -> None:
    calls = 0

    def broken() -> bool:
        nonlocal calls
        calls += 1
        raise KeyError("boom")

    with pytest.raises(KeyError):
        await eventually(broken, timeout=5)
    assert calls == 1


async def test_a_timeout_error_of_the_condition_itself_is_not_mistaken_for_the_wait() -> None:
    def times_out() -> bool:
        raise TimeoutError("the condition's own")

    with pytest.raises(TimeoutError, match="the condition's own"):
        await eventually(times_out, timeout=5)
