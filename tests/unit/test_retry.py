"""The one retry helper: what it retries, how long it waits, and that cancellation always wins.

Every wait goes through an injected sleep and every log decision through an injected clock,
so nothing here waits real time.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable

import pytest

from service_sdk.retry import (
    RetryEvent,
    RetryLog,
    RetryPolicy,
    call_with_retries,
    cancellation_requested,
)


class Refused(Exception):
    """Stands in for a connection refused."""


POLICY = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=0.3, multiplier=2.0)


class Flaky:
    """Fails with the given errors in turn, then returns ``"done"``."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


class FakeSleep:
    """Records the waits; returns at once (or blocks until released, when ``blocking``)."""

    def __init__(self, *, blocking: bool = False) -> None:
        self.waits: list[float] = []
        self.blocking = blocking
        self.sleeping = asyncio.Event()

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.sleeping.set()
        if self.blocking:
            await asyncio.Event().wait()


async def test_retries_until_the_action_succeeds() -> None:
    action = Flaky(Refused("refused"), Refused("refused"), Refused("refused"))
    sleep = FakeSleep()
    events: list[RetryEvent] = []

    assert await call_with_retries(action, POLICY, on_retry=events.append, sleep=sleep) == "done"

    assert action.calls == 4
    assert sleep.waits == pytest.approx([0.1, 0.2, 0.3])  # doubling, capped
    assert [(e.attempt, e.wait_s, e.max_attempts) for e in events] == [
        (1, sleep.waits[0], None),
        (2, sleep.waits[1], None),
        (3, sleep.waits[2], None),
    ]
    assert all(isinstance(e.error, Refused) for e in events)


async def test_the_action_may_be_any_callable_returning_an_awaitable() -> None:
    action = Flaky(Refused("refused"))
    calls: list[int] = []

    def via_lambda() -> Awaitable[str]:
        calls.append(1)
        return action()

    assert await call_with_retries(lambda: via_lambda(), POLICY, sleep=FakeSleep()) == "done"
    assert await call_with_retries(lambda: asyncio.sleep(0, "x"), POLICY) == "x"
    assert (action.calls, len(calls)) == (2, 2)


async def test_gives_up_after_max_attempts_with_the_last_error() -> None:
    last = Refused("third")
    action = Flaky(Refused("first"), Refused("second"), last, Refused("never raised"))
    sleep = FakeSleep()
    policy = RetryPolicy(initial_backoff_s=0.1, max_attempts=3)

    with pytest.raises(Refused) as raised:
        await call_with_retries(action, policy, sleep=sleep)

    assert raised.value is last
    assert action.calls == 3
    assert sleep.waits == pytest.approx([0.1, 0.2])


async def test_one_attempt_means_no_retry() -> None:
    action = Flaky(Refused("once"))
    sleep = FakeSleep()
    with pytest.raises(Refused):
        await call_with_retries(action, RetryPolicy(max_attempts=1), sleep=sleep)
    assert (action.calls, sleep.waits) == (1, [])


async def test_never_retries_an_error_the_predicate_rejects() -> None:
    action = Flaky(Refused("transient"), ValueError("a bug"))
    sleep = FakeSleep()

    with pytest.raises(ValueError, match="a bug"):
        await call_with_retries(
            action, POLICY, retry_on=lambda exc: isinstance(exc, Refused), sleep=sleep
        )

    assert action.calls == 2
    assert sleep.waits == pytest.approx([0.1])


async def test_cancelled_error_from_the_action_is_never_retried() -> None:
    action = Flaky(asyncio.CancelledError(), Refused("never reached"))
    sleep = FakeSleep()

    with pytest.raises(asyncio.CancelledError):
        await call_with_retries(action, POLICY, sleep=sleep)

    assert (action.calls, sleep.waits) == (1, [])


async def test_other_base_exceptions_propagate_as_they_are() -> None:
    action = Flaky(KeyboardInterrupt(), Refused("never reached"))
    with pytest.raises(KeyboardInterrupt):
        await call_with_retries(action, POLICY, sleep=FakeSleep())
    assert action.calls == 1


async def test_cancellation_during_the_backoff_propagates_at_once() -> None:
    action = Flaky(Refused("refused"), Refused("refused"))
    sleep = FakeSleep(blocking=True)
    task = asyncio.create_task(call_with_retries(action, POLICY, sleep=sleep))
    await sleep.sleeping.wait()

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert task.cancelled()
    assert action.calls == 1


async def test_cancellation_during_a_stoppable_backoff_propagates_at_once() -> None:
    action = Flaky(Refused("refused"), Refused("refused"))
    sleep = FakeSleep(blocking=True)
    stop = asyncio.Event()
    task = asyncio.create_task(call_with_retries(action, POLICY, sleep=sleep, stop=stop))
    await sleep.sleeping.wait()

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert action.calls == 1


async def test_a_failure_while_the_task_is_being_cancelled_becomes_the_cancellation() -> None:
    # A cancelled database call often surfaces as an ordinary error on a dead connection.
    symptom = Refused("connection invalidated")
    seen: list[BaseException] = []

    async def interrupted() -> str:
        current = asyncio.current_task()
        assert current is not None
        current.cancel()
        raise symptom

    async def loop() -> str:
        try:
            return await call_with_retries(interrupted, POLICY, sleep=FakeSleep())
        except BaseException as exc:
            seen.append(exc)
            raise

    task = asyncio.create_task(loop())
    with pytest.raises(asyncio.CancelledError):
        await task

    assert task.cancelled()
    (raised,) = seen
    assert isinstance(raised, asyncio.CancelledError)
    assert raised.__cause__ is symptom


async def test_giving_up_while_the_task_is_being_cancelled_is_the_cancellation() -> None:
    seen: list[BaseException] = []

    async def interrupted() -> str:
        current = asyncio.current_task()
        assert current is not None
        current.cancel()
        raise ValueError("not retried anyway")

    async def loop() -> None:
        try:
            await call_with_retries(interrupted, RetryPolicy(max_attempts=1), sleep=FakeSleep())
        except BaseException as exc:
            seen.append(exc)
            raise

    task = asyncio.create_task(loop())
    with pytest.raises(asyncio.CancelledError):
        await task
    assert isinstance(seen[0], asyncio.CancelledError)


async def test_cancellation_requested_reads_the_current_task() -> None:
    assert not cancellation_requested()
    observed: list[bool] = []

    async def probe() -> None:
        current = asyncio.current_task()
        assert current is not None
        current.cancel()
        observed.append(cancellation_requested())
        await asyncio.sleep(0)

    task = asyncio.create_task(probe())
    with pytest.raises(asyncio.CancelledError):
        await task
    assert observed == [True]


# -- stopping ------------------------------------------------------------------------------


async def test_stop_during_the_backoff_raises_the_last_error_at_once() -> None:
    last = Refused("refused")
    action = Flaky(last, Refused("never reached"))
    sleep = FakeSleep(blocking=True)
    stop = asyncio.Event()
    task = asyncio.create_task(call_with_retries(action, POLICY, sleep=sleep, stop=stop))
    await sleep.sleeping.wait()

    stop.set()
    with pytest.raises(Refused) as raised:
        await task

    assert raised.value is last
    assert action.calls == 1


async def test_stop_set_before_the_call_allows_one_attempt_and_no_retry() -> None:
    stop = asyncio.Event()
    stop.set()
    assert await call_with_retries(Flaky(), POLICY, stop=stop, sleep=FakeSleep()) == "done"

    action = Flaky(Refused("refused"))
    sleep = FakeSleep()
    with pytest.raises(Refused):
        await call_with_retries(action, POLICY, stop=stop, sleep=sleep)
    assert (action.calls, sleep.waits) == (1, [])


async def test_an_unset_stop_does_not_shorten_the_backoff() -> None:
    action = Flaky(Refused("refused"))
    sleep = FakeSleep()
    result = await call_with_retries(action, POLICY, stop=asyncio.Event(), sleep=sleep)
    assert (result, action.calls, sleep.waits) == ("done", 2, [0.1])


# -- the policy ----------------------------------------------------------------------------


def test_backoff_grows_by_the_multiplier_up_to_the_cap() -> None:
    policy = RetryPolicy(initial_backoff_s=0.05, max_backoff_s=5.0, multiplier=2.0)
    waits = [policy.backoff_s(n) for n in range(1, 10)]
    assert waits == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0])


def test_backoff_of_a_loop_that_retried_for_hours_stays_at_the_cap() -> None:
    assert RetryPolicy(max_backoff_s=5.0).backoff_s(100_000) == 5.0
    uncapped = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=math.inf, max_attempts=3)
    assert uncapped.backoff_s(3) == pytest.approx(0.4)


def test_constant_and_zero_backoff() -> None:
    assert RetryPolicy(initial_backoff_s=2, max_backoff_s=2, multiplier=1).backoff_s(7) == 2
    assert RetryPolicy(initial_backoff_s=0, max_backoff_s=math.inf).backoff_s(10_000) == 0


def test_jitter_shortens_the_wait_by_at_most_its_fraction() -> None:
    policy = RetryPolicy(initial_backoff_s=1.0, max_backoff_s=1.0, jitter=0.25)
    assert policy.backoff_s(1, 0.0) == 1.0
    assert policy.backoff_s(1, 0.5) == pytest.approx(0.875)
    assert policy.backoff_s(1, 0.999) > 0.75
    full = RetryPolicy(initial_backoff_s=1.0, max_backoff_s=1.0, jitter=1.0)
    assert full.backoff_s(1, 0.5) == pytest.approx(0.5)


async def test_jitter_is_drawn_from_the_injected_random_unit() -> None:
    policy = RetryPolicy(initial_backoff_s=1.0, max_backoff_s=1.0, jitter=0.5)
    sleep = FakeSleep()
    draws = iter([0.0, 1.0])
    await call_with_retries(
        Flaky(Refused(), Refused()), policy, sleep=sleep, random_unit=lambda: next(draws)
    )
    assert sleep.waits == pytest.approx([1.0, 0.5])


@pytest.mark.parametrize(
    "options",
    [
        {"initial_backoff_s": -1},
        {"initial_backoff_s": 2, "max_backoff_s": 1},
        {"multiplier": 0.5},
        {"jitter": 1.5},
        {"jitter": -0.1},
        {"max_attempts": 0},
        {"initial_backoff_s": math.nan},
    ],
)
def test_policy_rejects_nonsense(options: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        RetryPolicy(**options)  # type: ignore[arg-type]


# -- the rate-limited log ------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _event(attempt: int, max_attempts: int | None = None) -> RetryEvent:
    return RetryEvent(attempt, Refused("refused"), 0.5, max_attempts)


def test_retry_log_logs_at_most_once_per_interval_and_counts_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("tests.retry.rate")
    clock = FakeClock()
    log = RetryLog(logger, "outbox relay", interval_s=30.0, clock=clock)
    caplog.set_level(logging.DEBUG, logger=logger.name)

    log(_event(1))
    for attempt, now in [(2, 1.0), (3, 10.0), (4, 29.9)]:
        clock.now = now
        log(_event(attempt))
    assert log.suppressed == 3
    clock.now = 30.0
    log(_event(5))
    assert log.suppressed == 0

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        "outbox relay failed (attempt 1): Refused('refused'); retrying in 0.50s",
        "outbox relay failed (attempt 5): Refused('refused'); retrying in 0.50s"
        " (3 more failure(s) since the last report)",
    ]
    assert all(r.exc_info is None for r in warnings)
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(debug) == 3  # the held-back attempts are still visible when debugging


def test_retry_log_level_traceback_and_attempt_limit(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("tests.retry.level")
    log = RetryLog(logger, "scan", level=logging.ERROR, exc_info=True, clock=FakeClock())
    caplog.set_level(logging.DEBUG, logger=logger.name)

    log(_event(2, max_attempts=3))

    (record,) = caplog.records
    assert record.levelno == logging.ERROR
    assert record.getMessage().startswith("scan failed (attempt 2 of 3): ")
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], Refused)


async def test_retry_log_as_the_hook_of_a_failing_loop(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("tests.retry.loop")
    caplog.set_level(logging.WARNING, logger=logger.name)
    log = RetryLog(logger, "connect", interval_s=30.0, clock=FakeClock())
    action = Flaky(*(Refused("refused") for _ in range(5)))

    await call_with_retries(action, POLICY, on_retry=log, sleep=FakeSleep())

    assert action.calls == 6
    assert len(caplog.records) == 1  # five failures within the interval: one line
    assert log.suppressed == 4


def test_retry_log_rejects_a_negative_interval() -> None:
    with pytest.raises(ValueError, match="interval_s"):
        RetryLog(logging.getLogger("tests.retry"), "x", interval_s=-1)
