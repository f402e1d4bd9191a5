"""Rate-limiting aiokafka's own logging while Kafka is unreachable.

aiokafka logs every failed connection attempt at ERROR ("Unable connect to node with id 1:
..."), from every client, many times a second: a broker outage of half a minute used to
write some 19,000 such lines. :class:`LogThrottle` is a :class:`logging.Filter` that lets one
record per logger, level and message template through per interval, counts the others, and
says how many there were in the next line it lets through. Records below WARNING are left
alone. The runner's own retry loops log through :class:`~service_sdk.retry.RetryLog`, which
does the same for them.

:func:`throttle_kafka_logs` attaches one shared throttle to aiokafka's loggers (a filter on a
logger sees only that logger's own records, not its children's, so every ``aiokafka.*`` logger
gets it). :class:`~service_sdk.runner.ServiceRunner` calls it when it starts, unless told not
to; a service can call it itself, or attach its own :class:`LogThrottle` anywhere.

Example::

    throttle = throttle_kafka_logs(interval_s=60.0)
    ...
    logger.info("aiokafka lines suppressed so far: %d", throttle.suppressed)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["KAFKA_LOGGER", "LogThrottle", "throttle_kafka_logs"]

KAFKA_LOGGER = "aiokafka"
"""The root of aiokafka's loggers (its client logs on this one itself)."""

_MAX_KEYS = 1_000


class LogThrottle(logging.Filter):
    """Lets a repeated log line through at most once per ``interval_s``.

    Records are alike when they come from the same logger, at the same level, with the same
    message template (``record.msg``, before its arguments are filled in). The first is let
    through; the alike ones within ``interval_s`` after it are dropped and counted; the next
    one let through says how many were dropped.

    Args:
        interval_s: Least time between two alike records let through.
        level: Records below this level pass untouched.
        clock: Monotonic seconds (tests inject a fake one).

    Attributes:
        suppressed: Records dropped since the throttle was made.
    """

    def __init__(
        self,
        interval_s: float = 30.0,
        *,
        level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        if interval_s < 0:
            raise ValueError("interval_s must be at least 0")
        self.interval_s = interval_s
        self.level = level
        self.suppressed = 0
        self._clock = clock
        # key -> (when one was last let through, alike ones dropped since)
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}
        self._lock = threading.Lock()  # logging may be called from other threads

    def filter(self, record: logging.LogRecord) -> bool:
        """Let ``record`` through (True) or drop it (False); may append a count to it."""
        if record.levelno < self.level:
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = self._clock()
        with self._lock:
            last = self._seen.get(key)
            if last is not None and now - last[0] < self.interval_s:
                self._seen[key] = (last[0], last[1] + 1)
                self.suppressed += 1
                return False
            if len(self._seen) >= _MAX_KEYS and key not in self._seen:
                # Templates are few; many keys mean messages built without arguments.
                self._seen.clear()
            self._seen[key] = (now, 0)
        if last is not None and last[1]:
            message = record.getMessage()
            record.msg = "%s (%d more like it in the last %.0f s)"
            record.args = (message, last[1], now - last[0])
        return True


_installed: LogThrottle | None = None


def throttle_kafka_logs(interval_s: float = 30.0) -> LogThrottle:
    """Attach one shared :class:`LogThrottle` to ``aiokafka`` and all its loggers.

    Idempotent: later calls return the throttle attached first (and its interval), and
    attach it to aiokafka loggers created since.

    Args:
        interval_s: Least time between two alike lines, for the first call.

    Returns:
        The throttle (its ``suppressed`` counts what it dropped).
    """
    global _installed
    if _installed is None:
        _installed = LogThrottle(interval_s)
    throttle = _installed
    names = [KAFKA_LOGGER] + [
        name
        for name, node in list(logging.Logger.manager.loggerDict.items())
        if name.startswith(f"{KAFKA_LOGGER}.") and isinstance(node, logging.Logger)
    ]
    for name in names:
        target = logging.getLogger(name)
        if throttle not in target.filters:
            target.addFilter(throttle)
    return throttle
