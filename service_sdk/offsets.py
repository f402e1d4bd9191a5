"""Consumer offsets processed but not committed yet, committed at most every so often.

Committing after every polled batch costs a broker round trip per batch (and the broker a
write to ``__consumer_offsets``), awaited before the next poll. Both consumers that use this
(the coordinator's and the participant runner's) de-duplicate what they read again (the inbox,
the processed-commands record), so a commit may lag: a crash or a rebalance then re-reads at
most an interval's worth of records, and answers them from the record. A rebalance and a stop
commit what is pending first, so an orderly handover re-reads nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

__all__ = ["PendingOffsets"]


class PendingOffsets:
    """The next offset to commit per partition, and when a commit is due.

    Args:
        interval_s: The longest a processed offset waits for its commit; 0 commits after
            every batch.
        clock: Monotonic seconds (injectable for tests).
    """

    def __init__(self, interval_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if interval_s < 0:
            raise ValueError(f"interval_s must not be negative, got {interval_s}")
        self._interval_s = interval_s
        self._clock = clock
        self._pending: dict[Any, int] = {}
        self._since: float | None = None

    def add(self, offsets: Mapping[Any, int]) -> None:
        """Record that everything before ``offsets[tp]`` is processed."""
        if not offsets:
            return
        if self._since is None:
            self._since = self._clock()
        for tp, offset in offsets.items():
            self._pending[tp] = max(offset, self._pending.get(tp, offset))

    def __bool__(self) -> bool:
        return bool(self._pending)

    def due(self) -> bool:
        """True when offsets are pending and the oldest has waited ``interval_s``."""
        return self._since is not None and self._clock() - self._since >= self._interval_s

    def wait_s(self, default_s: float) -> float:
        """How long a poll may block before a commit falls due (``default_s`` if none)."""
        if self._since is None:
            return default_s
        left = self._interval_s - (self._clock() - self._since)
        return max(0.0, min(default_s, left))

    def take(self, partitions: Collection[Any] | None = None) -> dict[Any, int]:
        """Remove and return the pending offsets (of ``partitions`` only, if given)."""
        if partitions is None:
            taken, self._pending = self._pending, {}
        else:
            taken = {tp: o for tp, o in self._pending.items() if tp in partitions}
            for tp in taken:
                del self._pending[tp]
        if not self._pending:
            self._since = None
        return taken
