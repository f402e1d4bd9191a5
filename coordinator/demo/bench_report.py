"""What ``saga bench`` measured: each run, and each load level as median [min-max] of its runs.

Pure data and arithmetic (no I/O), so the aggregation is unit-tested on its own.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from coordinator.demo.runner import DemoSummary
from coordinator.demo.sampling import Usage

__all__ = [
    "BROKER",
    "DATABASE",
    "DRIVER",
    "METRICS",
    "TOTAL",
    "BaselineResult",
    "BenchReport",
    "LevelReport",
    "Load",
    "RunResult",
    "Spread",
    "aggregate",
    "cpu_per_saga_ms",
    "spread",
]

BROKER, DATABASE, DRIVER = "kafka", "postgres", "bench"
"""Roles besides the children. The driver (the bench's own process, the load generator) is
reported but not counted in a saga's CPU: it is not part of the system under test."""
TOTAL = "total"
METRICS = ("sagas_per_s", "p50_ms", "p95_ms", "p99_ms", "wall_s")


@dataclass(frozen=True)
class Load:
    """One load level: ``value`` sagas in flight (``window``) or started per second (``rate``)."""

    kind: Literal["window", "rate"]
    value: float

    @property
    def label(self) -> str:
        """``W=10`` or ``R=200/s``."""
        return f"W={self.value:g}" if self.kind == "window" else f"R={self.value:g}/s"


@dataclass(frozen=True)
class Spread:
    """The median of several runs and their range."""

    median: float
    low: float
    high: float

    def as_dict(self, digits: int = 3) -> dict[str, float]:
        """``{"median": ..., "min": ..., "max": ...}``."""
        return {
            "median": round(self.median, digits),
            "min": round(self.low, digits),
            "max": round(self.high, digits),
        }


def spread(values: Iterable[float | None]) -> Spread | None:
    """Median, min and max of the measured values (None where nothing was measured)."""
    measured = [v for v in values if v is not None]
    if not measured:
        return None
    return Spread(statistics.median(measured), min(measured), max(measured))


def cpu_per_saga_ms(cpu_s: Mapping[str, float | None], sagas: int) -> dict[str, float | None]:
    """Milliseconds of CPU per saga of each role, and their ``total`` over the roles that
    were measured, the driver excepted (None when none was)."""
    if sagas <= 0:
        return {role: None for role in [*cpu_s, TOTAL]}
    per_saga = {role: None if s is None else s * 1000 / sagas for role, s in cpu_s.items()}
    counted = [v for role, v in per_saga.items() if role != DRIVER and v is not None]
    per_saga[TOTAL] = sum(counted) if counted else None
    return per_saga


def tenth_rates(end_times: Sequence[float]) -> tuple[float, float] | None:
    """Sagas/s over the first and over the last tenth of the sagas' ends (a slowdown as the
    tables grow shows as a last tenth slower than the first); None under 20 ends."""
    ends = sorted(end_times)
    tenth = len(ends) // 10
    if tenth < 2:
        return None
    first = ends[tenth - 1] - ends[0]
    last = ends[-1] - ends[-tenth]
    if first <= 0 or last <= 0:
        return None
    return (tenth - 1) / first, (tenth - 1) / last


@dataclass(frozen=True)
class RunResult:
    """One run at one load level."""

    load: Load
    run: int
    """The round (1..runs) it belongs to."""
    summary: DemoSummary
    usage: Usage
    tenths: tuple[float, float] | None = None
    """Sagas/s of the first and of the last tenth of the ends (:func:`tenth_rates`)."""

    @property
    def cpu_ms_per_saga(self) -> dict[str, float | None]:
        """CPU milliseconds per saga of each role and in total."""
        return cpu_per_saga_ms(self.usage.cpu_s, self.summary.orders)

    def as_dict(self) -> dict[str, Any]:
        """The run's entry in the JSON report."""
        return {
            "run": self.run,
            **self.summary.as_dict(),
            "ledger_problems": list(self.summary.ledger_problems),
            "cpu_s": _rounded(self.usage.cpu_s, 3),
            "cpu_ms_per_saga": _rounded(self.cpu_ms_per_saga, 3),
            "peak_rss_mb": _rounded(self.usage.peak_rss_mb, 1),
            "rss_growth_mb": _rounded(self.usage.rss_growth_mb, 1),
            "first_tenth_per_s": None if self.tenths is None else round(self.tenths[0], 1),
            "last_tenth_per_s": None if self.tenths is None else round(self.tenths[1], 1),
        }


@dataclass(frozen=True)
class BaselineResult:
    """One run of the bare pipeline (``pingpong.py``) on the same servers."""

    run: int
    orders: int
    sagas_per_s: float
    p50_ms: float
    p99_ms: float
    wall_s: float
    usage: Usage
    """``pingpong`` (its two processes), the broker and PostgreSQL."""

    @property
    def cpu_ms_per_saga(self) -> dict[str, float | None]:
        """CPU milliseconds per saga of each role and in total."""
        return cpu_per_saga_ms(self.usage.cpu_s, self.orders)

    def as_dict(self) -> dict[str, Any]:
        """The run's entry in the JSON report."""
        return {
            "run": self.run,
            "orders": self.orders,
            "sagas_per_s": self.sagas_per_s,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "wall_s": self.wall_s,
            "cpu_s": _rounded(self.usage.cpu_s, 3),
            "cpu_ms_per_saga": _rounded(self.cpu_ms_per_saga, 3),
        }


@dataclass(frozen=True)
class LevelReport:
    """The runs of one load level, each metric as median [min-max]."""

    load: Load
    runs: tuple[RunResult, ...]
    metrics: dict[str, Spread | None]
    """Each of :data:`METRICS`."""
    cpu_s: dict[str, Spread | None]
    cpu_ms_per_saga: dict[str, Spread | None]
    """Per role, and :data:`TOTAL`."""
    peak_rss_mb: dict[str, Spread | None]
    rss_growth_mb: dict[str, Spread | None]
    tenths: dict[str, Spread | None]
    """``first_tenth_per_s`` and ``last_tenth_per_s``."""
    ratio: Spread | None
    """sagas/s over the bare pipeline's sagas/s, each run against the baseline of its round."""

    @property
    def ok(self) -> bool:
        """Every run ended every saga, none FAILED, and its ledger adds up."""
        return all(r.summary.ok for r in self.runs)

    def as_dict(self) -> dict[str, Any]:
        """The level's part of the JSON report."""
        return {
            "load": {self.load.kind: self.load.value},
            "ok": self.ok,
            "ledger_ok": all(r.summary.ledger_ok for r in self.runs),
            **{name: _spread_dict(s) for name, s in self.metrics.items()},
            "cpu_s": _spread_dicts(self.cpu_s),
            "cpu_ms_per_saga": _spread_dicts(self.cpu_ms_per_saga),
            "peak_rss_mb": _spread_dicts(self.peak_rss_mb),
            "rss_growth_mb": _spread_dicts(self.rss_growth_mb),
            **_spread_dicts(self.tenths),
            "ratio_to_baseline": _spread_dict(self.ratio),
            "runs": [r.as_dict() for r in self.runs],
        }


def aggregate(
    load: Load, runs: Sequence[RunResult], baselines: Sequence[BaselineResult] = ()
) -> LevelReport:
    """Median [min-max] of every metric over ``runs``; the ratio to the baseline pairs each
    run with the bare-pipeline run of the same round (both under the same noise)."""
    roles = list(dict.fromkeys(role for r in runs for role in r.usage.cpu_s))
    per_saga = [r.cpu_ms_per_saga for r in runs]
    by_round = {b.run: b.sagas_per_s for b in baselines}
    ratios = [r.summary.sagas_per_s / by_round[r.run] for r in runs if by_round.get(r.run, 0) > 0]
    return LevelReport(
        load=load,
        runs=tuple(runs),
        metrics={m: spread(getattr(r.summary, m) for r in runs) for m in METRICS},
        cpu_s={role: spread(r.usage.cpu_s.get(role) for r in runs) for role in roles},
        cpu_ms_per_saga={role: spread(p.get(role) for p in per_saga) for role in [*roles, TOTAL]},
        peak_rss_mb={role: spread(r.usage.peak_rss_mb.get(role) for r in runs) for role in roles},
        rss_growth_mb={
            role: spread(r.usage.rss_growth_mb.get(role) for r in runs) for role in roles
        },
        tenths={
            "first_tenth_per_s": spread(r.tenths[0] if r.tenths else None for r in runs),
            "last_tenth_per_s": spread(r.tenths[1] if r.tenths else None for r in runs),
        },
        ratio=spread(ratios),
    )


@dataclass
class BenchReport:
    """Everything ``saga bench`` measured, and on what."""

    orders: int
    runs: int
    warmup: int
    fail_rate: float
    kafka: str
    """e.g. ``apache 4.1.1 at 127.0.0.1:40123 (started here), idempotent producer on``."""
    idempotent: bool
    """Whether every producer (coordinator, participants, load generator) was idempotent."""
    postgres: str
    fsync: str
    """``SHOW fsync`` of the server the sagas ran on, as it answered."""
    synchronous_commit: str
    lifecycle_events: str = "all"
    """Which lifecycle events the coordinator published (``SAGA_EVENTS__PUBLISH``)."""
    levels: list[LevelReport] = field(default_factory=list)
    baselines: list[BaselineResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every run of every level ended every saga and passed the ledger check."""
        return all(level.ok for level in self.levels)

    def baseline_metrics(self) -> dict[str, Spread | None]:
        """The bare pipeline's sagas/s, latencies and CPU per saga (``cpu_ms_per_saga``)."""
        return {
            "sagas_per_s": spread(b.sagas_per_s for b in self.baselines),
            "p50_ms": spread(b.p50_ms for b in self.baselines),
            "p99_ms": spread(b.p99_ms for b in self.baselines),
            "cpu_ms_per_saga": spread(b.cpu_ms_per_saga[TOTAL] for b in self.baselines),
        }

    def as_dict(self) -> dict[str, Any]:
        """The ``--json`` document."""
        baseline = None
        if self.baselines:
            baseline = {
                **_spread_dicts(self.baseline_metrics()),
                "runs": [b.as_dict() for b in self.baselines],
            }
        return {
            "saga": "order",
            "orders": self.orders,
            "runs": self.runs,
            "warmup": self.warmup,
            "fail_rate": self.fail_rate,
            "kafka": self.kafka,
            "idempotent": self.idempotent,
            "postgres": self.postgres,
            "fsync": self.fsync,
            "synchronous_commit": self.synchronous_commit,
            "lifecycle_events": self.lifecycle_events,
            "ok": self.ok,
            "levels": [level.as_dict() for level in self.levels],
            "baseline": baseline,
        }


def _spread_dict(value: Spread | None) -> dict[str, float] | None:
    return None if value is None else value.as_dict()


def _spread_dicts(values: Mapping[str, Spread | None]) -> dict[str, dict[str, float] | None]:
    return {key: _spread_dict(value) for key, value in values.items()}


def _rounded(values: Mapping[str, float | None], digits: int) -> dict[str, float | None]:
    return {k: None if v is None else round(v, digits) for k, v in values.items()}
