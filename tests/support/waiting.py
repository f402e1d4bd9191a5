"""Tests wait for facts, not for time: the suite's one polling helper.

A test that sleeps "long enough" for something to happen is slow when the machine is idle and
flaky when it is busy. :func:`eventually` polls a condition instead and returns as soon as it
holds, so the timeout is only a bound on failure, never a guess at how long things take::

    saga = await eventually(lambda: saga_in_status(store, "s-1", SagaStatus.COMPLETED))

    async def both_replies() -> None:
        assert len(await read_replies()) == 2

    await eventually(both_replies, timeout=60)
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast, overload

__all__ = ["eventually"]

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 30.0
"""Generous: the machine is shared with other test runs, and a passing test never waits it out."""


@overload
async def eventually(
    condition: Callable[[], Awaitable[T]],
    *,
    timeout: float = ...,  # noqa: ASYNC109 (bounds the polling)
    interval: float = ...,
    what: str | None = ...,
) -> T: ...


@overload
async def eventually(
    condition: Callable[[], T],
    *,
    timeout: float = ...,  # noqa: ASYNC109 (bounds the polling)
    interval: float = ...,
    what: str | None = ...,
) -> T: ...


async def eventually(
    condition: Callable[[], T | Awaitable[T]],
    *,
    timeout: float = DEFAULT_TIMEOUT_S,  # noqa: ASYNC109 (bounds the polling)
    interval: float = 0.1,
    what: str | None = None,
) -> T:
    """Call ``condition`` until it holds, and return what it returned then.

    Args:
        condition: A sync or async callable. It holds when it returns a truthy value; while
            the fact is not yet true it returns something falsy or raises ``AssertionError``
            (so a condition can be written as plain ``assert`` statements). Any other
            exception propagates at once.
        timeout: Seconds until the wait fails. A call still running then is cancelled.
        interval: Seconds between calls (0 for a condition that waits by itself, such as a
            Kafka ``getmany`` with a timeout).
        what: What is awaited, for the failure message; the condition's name when None.

    Raises:
        AssertionError: ``condition`` did not hold within ``timeout``; the message gives the
            last value it returned or the last ``AssertionError`` it raised.
    """
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    calls = 0
    last_value: object = None
    last_error: AssertionError | None = None
    scope = asyncio.timeout_at(end)
    try:
        async with scope:
            while True:
                calls += 1
                try:
                    result = condition()
                    value = cast(T, await result if inspect.isawaitable(result) else result)
                except AssertionError as error:
                    last_error = error
                else:
                    if value:
                        return value
                    last_value, last_error = value, None
                await asyncio.sleep(max(0.0, min(interval, end - loop.time())))
    except TimeoutError:
        if not scope.expired():
            raise  # the condition's own TimeoutError, not the wait running out
    name = what or getattr(condition, "__qualname__", None) or repr(condition)
    last = (
        f"last: {type(last_error).__name__}: {last_error}"
        if last_error is not None
        else f"last value: {last_value!r}"
    )
    raise AssertionError(
        f"timed out after {timeout:g} s waiting for {name} ({calls} call(s)); {last}"
    ) from last_error
