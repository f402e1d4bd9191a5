"""The scheduler's Prometheus metrics (part of :class:`~coordinator.observability.metrics.CoordinatorMetrics`).

========================================================= =======================================
``saga_schedule_ticks_total{schedule,outcome}``            ticks fired (a saga started), skipped
                                                           (missed, by the catch-up policy) or
                                                           failed (no valid start data)
``saga_schedule_lag_seconds{schedule}``                    a tick's time to its saga's start
                                                           (histogram)
``saga_schedules{state}``                                  schedules active or paused (sampled)
========================================================= =======================================
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["SCHEDULE_LAG_BUCKETS", "TICK_OUTCOMES", "ScheduleMetrics"]

TICK_OUTCOMES = ("fired", "skipped", "failed")
SCHEDULE_STATES = ("active", "paused")

SCHEDULE_LAG_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)
"""Seconds: a tick fires within a scan interval (1 s) unless it is caught up after an outage."""


class ScheduleMetrics:
    """Counts what the scheduler does; never raises."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.ticks = Counter(
            "saga_schedule_ticks_total",
            "Schedule ticks: fired (saga started), skipped (missed), failed (no valid data).",
            ["schedule", "outcome"],
            registry=registry,
        )
        self.lag = Histogram(
            "saga_schedule_lag_seconds",
            "Time from a schedule's tick to the start of its saga.",
            ["schedule"],
            buckets=SCHEDULE_LAG_BUCKETS,
            registry=registry,
        )
        self.schedules = Gauge(
            "saga_schedules",
            "Declared schedules by state: active or paused (sampled).",
            ["state"],
            registry=registry,
        )

    def prime(self, schedules: Iterable[str]) -> None:
        """Create every series at zero, so dashboards show them before the first tick."""
        for name in schedules:
            for outcome in TICK_OUTCOMES:
                self.ticks.labels(name, outcome)
            self.lag.labels(name)
        for state in SCHEDULE_STATES:
            self.schedules.labels(state)

    def fired(self, schedule: str, lag_s: float) -> None:
        """A tick started its saga ``lag_s`` after its time."""
        self.ticks.labels(schedule, "fired").inc()
        self.lag.labels(schedule).observe(max(lag_s, 0.0))

    def skipped(self, schedule: str, count: int) -> None:
        """``count`` ticks were missed and not caught up."""
        if count > 0:
            self.ticks.labels(schedule, "skipped").inc(count)

    def failed(self, schedule: str) -> None:
        """A tick could not start its saga (its data)."""
        self.ticks.labels(schedule, "failed").inc()

    def set_states(self, counts: Mapping[str, int]) -> None:
        """The number of schedules per state (``active``, ``paused``)."""
        for state in SCHEDULE_STATES:
            self.schedules.labels(state).set(counts.get(state, 0))
