"""Whether a runner is making progress: what its heartbeats and ``healthy`` stand for.

A heartbeat tells the coordinator "this service is working through its queue", and the
coordinator then postpones the deadlines of commands nobody has picked up yet. A runner that
cannot work (its database is down, its replies cannot be published, its loop is stuck) must
not say so: the commands it never picks up would wait forever. :class:`Progress` is the
bookkeeping (no I/O, an injected clock):

* :meth:`~Progress.advanced` when the consume loop completes a poll (empty or not), a handler
  starts, or a command is answered;
* :meth:`~Progress.failing` when one of the runner's retry loops fails (``on_retry``) and
  :meth:`~Progress.recovered` when it succeeds again.

The runner is *live* while no loop is failing and it advanced within ``stall_after_s``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from service_sdk.retry import RetryEvent

__all__ = ["Progress"]


class Progress:
    """Recent progress of one runner, and the retry loops failing now.

    Args:
        stall_after_s: A runner that has not advanced for longer is not live.
        clock: Monotonic seconds (tests inject a fake one).
    """

    def __init__(
        self, stall_after_s: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not stall_after_s > 0:
            raise ValueError("stall_after_s must be more than 0")
        self.stall_after_s = stall_after_s
        self._clock = clock
        self._advanced_at = clock()
        self._failing: dict[str, str] = {}

    def advanced(self) -> None:
        """The runner did some work: a poll completed, a handler started, a command was answered."""
        self._advanced_at = self._clock()

    def failing(self, what: str, error: BaseException | None = None) -> None:
        """The retry loop ``what`` failed and is about to try again."""
        self._failing[what] = repr(error) if error is not None else "failing"

    def recovered(self, what: str) -> None:
        """The retry loop ``what`` succeeded (a no-op when it was not failing)."""
        if self._failing:
            self._failing.pop(what, None)

    def on_retry(
        self, what: str, log: Callable[[RetryEvent], None] | None = None
    ) -> Callable[[RetryEvent], None]:
        """An ``on_retry`` hook for :func:`~service_sdk.retry.call_with_retries`: marks
        ``what`` failing, then calls ``log`` (e.g. a :class:`~service_sdk.retry.RetryLog`)."""

        def hook(event: RetryEvent) -> None:
            self.failing(what, event.error)
            if log is not None:
                log(event)

        return hook

    def live(self) -> bool:
        """True while no retry loop is failing and the runner advanced recently."""
        return self.why_not() is None

    def why_not(self) -> str | None:
        """Why the runner is not live (for logs), or None when it is."""
        if self._failing:
            return "; ".join(f"{what}: {error}" for what, error in self._failing.items())
        idle = self._clock() - self._advanced_at
        if idle > self.stall_after_s:
            return f"no progress for {idle:.1f} s"
        return None
