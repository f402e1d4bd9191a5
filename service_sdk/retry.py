"""The one retry policy: every loop that retries a failing operation goes through here.

:func:`call_with_retries` runs an operation until it succeeds, backing off between attempts
as a :class:`RetryPolicy` says, for the errors a predicate accepts. It is built on
`tenacity <https://tenacity.readthedocs.io/>`_ (its per-call hooks and injectable sleep
keep every loop's state local and let tests run without waiting).

Cancellation always wins. ``asyncio.CancelledError`` is never retried, and a failure while
the current task is being cancelled (a cancelled database call often surfaces as an ordinary
error on an invalidated connection) is raised as ``asyncio.CancelledError``, chained to that
failure, so ``asyncio.timeout``, ``TaskGroup`` and ``Task.cancel()`` see the cancellation they
asked for instead of an error to handle. A cancellation during the backoff wait ends it at once.

Example::

    log = RetryLog(logger, "outbox relay", interval_s=30.0)
    policy = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=5.0)
    published = await call_with_retries(relay.drain, policy, stop=stopping, on_retry=log)
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState

__all__ = [
    "RetryEvent",
    "RetryLog",
    "RetryPolicy",
    "any_error",
    "call_with_retries",
    "cancellation_requested",
]

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How long to wait between attempts, and how many attempts to make.

    The wait after failure ``n`` (1-based) is
    ``min(initial_backoff_s * multiplier ** (n - 1), max_backoff_s)``, shortened by a random
    fraction of at most ``jitter`` of itself (``jitter=1`` is "full jitter": anywhere between
    zero and the full wait), so that many processes failing together do not retry together.

    Attributes:
        initial_backoff_s: Wait after the first failure, in seconds.
        max_backoff_s: Longest wait, in seconds (``math.inf``: no cap).
        multiplier: Factor applied to the wait after each further failure (1: constant).
        jitter: Largest fraction of a wait removed at random, from 0 (none) to 1.
        max_attempts: Attempts before the last error is raised; None retries forever.

    Raises:
        ValueError: A negative wait, a multiplier below 1, a jitter outside [0, 1], a cap
            below the first wait, or fewer than one attempt.
    """

    initial_backoff_s: float = 0.1
    max_backoff_s: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.0
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        if not self.initial_backoff_s >= 0:
            raise ValueError("initial_backoff_s must be at least 0")
        if not self.max_backoff_s >= self.initial_backoff_s:
            raise ValueError("max_backoff_s must be at least initial_backoff_s")
        if not self.multiplier >= 1:
            raise ValueError("multiplier must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be between 0 and 1")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1 (or None: forever)")

    def backoff_s(self, failures: int, random_unit: float = 0.0) -> float:
        """The wait after the ``failures``-th failure in a row.

        Args:
            failures: Failed attempts so far (1 after the first failure).
            random_unit: A number in [0, 1) that draws the jitter (0: the full wait).

        Returns:
            Seconds to wait before the next attempt.
        """
        if self.initial_backoff_s == 0:
            return 0.0
        try:
            wait = self.initial_backoff_s * self.multiplier ** max(failures - 1, 0)
        except OverflowError:  # a loop that has retried forever: long since at the cap
            wait = math.inf
        return min(wait, self.max_backoff_s) * (1 - self.jitter * random_unit)


@dataclass(frozen=True)
class RetryEvent:
    """One failed attempt that is about to be retried, as an ``on_retry`` hook sees it.

    Attributes:
        attempt: Number of the attempt that failed (1 for the first).
        error: What it raised.
        wait_s: Seconds until the next attempt.
        max_attempts: The policy's limit (None: forever).
    """

    attempt: int
    error: Exception
    wait_s: float
    max_attempts: int | None


def cancellation_requested() -> bool:
    """True when the current task has been asked to cancel (``Task.cancelling()``).

    A loop that catches ``Exception`` must not go on once this is true: the error it caught
    may be the cancellation's symptom (a database call interrupted half-way).
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def any_error(exc: Exception) -> bool:
    """The default predicate: retry every ``Exception`` (cancellation is never one)."""
    return True


class _StopRequestedError(Exception):
    """The stop event was set during a backoff wait (never leaves this module)."""


async def call_with_retries(
    action: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    retry_on: Callable[[Exception], bool] = any_error,
    on_retry: Callable[[RetryEvent], None] | None = None,
    stop: asyncio.Event | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    random_unit: Callable[[], float] = random.random,
) -> T:
    """Await ``action()`` until it succeeds, retrying failures that ``retry_on`` accepts.

    The first attempt is always made. After a failure the error is raised as it is when
    ``retry_on`` rejects it, when ``policy.max_attempts`` is reached, or when ``stop`` is set
    (during the attempt or the wait after it; the wait then ends at once). Otherwise
    ``on_retry`` is told and the next attempt follows the policy's wait.

    Args:
        action: Makes one attempt; called anew for every attempt.
        policy: Waits and attempt limit.
        retry_on: Which errors are worth another attempt (default: all). Never sees
            ``asyncio.CancelledError`` or other ``BaseException``; those always propagate.
        on_retry: Called before each wait, e.g. a :class:`RetryLog`; must not raise.
        stop: When set, no further attempt is made and the last error is raised.
        sleep: Waits between attempts (tests inject a fake one).
        random_unit: Draws the jitter, in [0, 1).

    Returns:
        What the first successful attempt returned.

    Raises:
        asyncio.CancelledError: The task is being cancelled, whatever the attempt raised.
        Exception: The last attempt's error, when it is not retried (see above).
    """
    last_error: list[Exception] = []

    def should_retry(state: RetryCallState) -> bool:
        error = state.outcome.exception() if state.outcome is not None else None
        if not isinstance(error, Exception) or cancellation_requested():
            return False  # cancellation, KeyboardInterrupt & co. propagate as they are
        return retry_on(error)

    def should_stop(state: RetryCallState) -> bool:
        if stop is not None and stop.is_set():
            return True
        return policy.max_attempts is not None and state.attempt_number >= policy.max_attempts

    def wait(state: RetryCallState) -> float:
        return policy.backoff_s(state.attempt_number, random_unit())

    def before_sleep(state: RetryCallState) -> None:
        assert state.outcome is not None
        error = state.outcome.exception()
        assert isinstance(error, Exception)  # should_retry accepted it
        last_error[:] = [error]
        if on_retry is not None:
            on_retry(
                RetryEvent(state.attempt_number, error, state.upcoming_sleep, policy.max_attempts)
            )

    async def backoff(seconds: float) -> None:
        if stop is None:
            await sleep(seconds)
        elif not await _sleep_unless_set(sleep, seconds, stop):
            raise _StopRequestedError

    retrying = AsyncRetrying(
        sleep=backoff,
        stop=should_stop,
        wait=wait,
        retry=should_retry,
        before_sleep=before_sleep,
        reraise=True,
    )

    async def attempt() -> T:
        # tenacity awaits only what it recognises as a coroutine function; ``action`` may be
        # a lambda or a bound method returning an awaitable.
        return await action()

    try:
        result: T = await retrying(attempt)
        return result
    except _StopRequestedError:
        pass
    except Exception as exc:
        if cancellation_requested():
            raise asyncio.CancelledError from exc
        raise
    # Stopped during a wait: the error that led to it is the caller's answer.
    raise last_error[0]


async def _sleep_unless_set(
    sleep: Callable[[float], Awaitable[None]], seconds: float, event: asyncio.Event
) -> bool:
    """Sleep; return False at once when ``event`` is (or becomes) set."""
    if event.is_set():
        return False
    sleeping = asyncio.ensure_future(sleep(seconds))
    setting = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait((sleeping, setting), return_when=asyncio.FIRST_COMPLETED)
    finally:
        sleeping.cancel()
        setting.cancel()
    if sleeping.done() and not sleeping.cancelled():
        sleeping.result()  # a failing sleep is the caller's error, not a lost one
    return not event.is_set()


class RetryLog:
    """An ``on_retry`` hook logging a failing loop at most once per ``interval_s``.

    The first failure is logged at once; failures within the interval after a logged one
    go to DEBUG only and are counted, and the next logged line says how many there were.
    Use one instance per loop (the interval is per instance).

    Args:
        logger: Where to log (the loop's module logger, so the lines keep its name).
        what: What is failing, for the message ("outbox relay").
        interval_s: Least time between two lines at ``level``.
        level: Level of the logged lines.
        exc_info: Attach the error's traceback to the logged lines.
        clock: Monotonic seconds (tests inject a fake one).
    """

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        interval_s: float = 30.0,
        level: int = logging.WARNING,
        exc_info: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval_s < 0:
            raise ValueError("interval_s must be at least 0")
        self._logger = logger
        self._what = what
        self._interval_s = interval_s
        self._level = level
        self._exc_info = exc_info
        self._clock = clock
        self._logged_at: float | None = None
        self._suppressed = 0

    @property
    def suppressed(self) -> int:
        """Failures not logged at ``level`` since the last line that was."""
        return self._suppressed

    def __call__(self, event: RetryEvent) -> None:
        """Log ``event``, unless a line was logged less than ``interval_s`` ago."""
        now = self._clock()
        if self._logged_at is not None and now - self._logged_at < self._interval_s:
            self._suppressed += 1
            self._logger.debug(
                "%s failed (attempt %s): %r; retrying in %.2fs",
                self._what,
                _attempt(event),
                event.error,
                event.wait_s,
            )
            return
        suppressed, self._suppressed, self._logged_at = self._suppressed, 0, now
        self._logger.log(
            self._level,
            "%s failed (attempt %s): %r; retrying in %.2fs%s",
            self._what,
            _attempt(event),
            event.error,
            event.wait_s,
            f" ({suppressed} more failure(s) since the last report)" if suppressed else "",
            exc_info=event.error if self._exc_info else None,
        )


def _attempt(event: RetryEvent) -> str:
    if event.max_attempts is None:
        return str(event.attempt)
    return f"{event.attempt} of {event.max_attempts}"
