"""``saga bench``'s arithmetic: median [min-max], CPU per saga, the closed loop's bookkeeping."""

from __future__ import annotations

import json

import pytest
import typer

from coordinator.cli.bench import cell, parse_levels
from coordinator.demo.bench import WindowBook, due_starts
from coordinator.demo.bench_report import (
    DRIVER,
    TOTAL,
    BaselineResult,
    BenchReport,
    Load,
    RunResult,
    Spread,
    aggregate,
    cpu_per_saga_ms,
    spread,
    tenth_rates,
)
from coordinator.demo.runner import DemoSummary
from coordinator.demo.sampling import Usage

W10 = Load("window", 10)


def _summary(sagas_per_s: float, *, orders: int = 100, ledger_ok: bool = True) -> DemoSummary:
    return DemoSummary(
        orders=orders,
        completed=orders,
        compensated=0,
        failed=0,
        stuck=0,
        wall_s=orders / sagas_per_s,
        sagas_per_s=sagas_per_s,
        p50_ms=10.0,
        p95_ms=20.0,
        p99_ms=30.0,
        ledger_ok=ledger_ok,
    )


def _run(run: int, sagas_per_s: float, cpu_s: dict[str, float | None]) -> RunResult:
    usage = Usage(cpu_s, {role: 50.0 for role in cpu_s})
    return RunResult(W10, run, _summary(sagas_per_s), usage)


def _baseline(run: int, sagas_per_s: float) -> BaselineResult:
    usage = Usage({"pingpong": 0.5, "kafka": 0.2, "postgres": 0.3}, {})
    return BaselineResult(run, 100, sagas_per_s, 5.0, 9.0, 100 / sagas_per_s, usage)


def test_a_spread_is_the_median_and_the_range_of_what_was_measured() -> None:
    assert spread([3.0, 1.0, 2.0]) == Spread(2.0, 1.0, 3.0)
    assert spread([4.0, 1.0, 2.0, 3.0]) == Spread(2.5, 1.0, 4.0)
    assert spread([7.0]) == Spread(7.0, 7.0, 7.0)
    assert spread([None, 5.0, None, 1.0]) == Spread(3.0, 1.0, 5.0)
    assert spread([None, None]) is None
    assert spread([]) is None


def test_cpu_per_saga_is_milliseconds_per_saga_and_the_total_leaves_the_driver_out() -> None:
    per_saga = cpu_per_saga_ms(
        {"coordinator-0": 2.0, "kafka": 1.0, "postgres": None, DRIVER: 4.0}, 500
    )
    assert per_saga == {
        "coordinator-0": pytest.approx(4.0),
        "kafka": pytest.approx(2.0),
        "postgres": None,
        DRIVER: pytest.approx(8.0),
        TOTAL: pytest.approx(6.0),
    }


def test_cpu_per_saga_of_nothing_measured_or_no_sagas_is_unknown() -> None:
    assert cpu_per_saga_ms({"kafka": None}, 10) == {"kafka": None, TOTAL: None}
    assert cpu_per_saga_ms({"kafka": 1.0}, 0) == {"kafka": None, TOTAL: None}


def test_a_level_reports_each_metric_over_its_runs() -> None:
    runs = [
        _run(1, 100.0, {"coordinator-0": 1.0, "kafka": 0.5}),
        _run(2, 80.0, {"coordinator-0": 3.0, "kafka": None}),
        _run(3, 120.0, {"coordinator-0": 2.0, "kafka": 1.5}),
    ]
    level = aggregate(W10, runs)
    assert level.metrics["sagas_per_s"] == Spread(100.0, 80.0, 120.0)
    assert level.metrics["p99_ms"] == Spread(30.0, 30.0, 30.0)
    assert level.cpu_s["coordinator-0"] == Spread(2.0, 1.0, 3.0)
    assert level.cpu_s["kafka"] == Spread(1.0, 0.5, 1.5)
    # 100 sagas per run: seconds x 10 = ms per saga; the total sums each run's roles first.
    assert level.cpu_ms_per_saga["coordinator-0"] == Spread(20.0, 10.0, 30.0)
    assert level.cpu_ms_per_saga[TOTAL] == Spread(30.0, 15.0, 35.0)
    assert level.ratio is None
    assert level.ok


def test_the_ratio_pairs_each_run_with_the_baseline_of_its_round() -> None:
    runs = [_run(1, 100.0, {}), _run(2, 60.0, {}), _run(3, 90.0, {})]
    baselines = [_baseline(1, 1000.0), _baseline(2, 300.0), _baseline(3, 900.0)]
    level = aggregate(W10, runs, baselines)
    assert level.ratio == Spread(0.1, 0.1, 0.2)


def test_one_failed_ledger_fails_the_level_and_the_report() -> None:
    bad = RunResult(W10, 2, _summary(90.0, ledger_ok=False), Usage({}, {}))
    level = aggregate(W10, [_run(1, 100.0, {}), bad])
    report = BenchReport(
        orders=100, runs=2, warmup=50, fail_rate=0.0, kafka="apache", idempotent=True, postgres="pg", fsync="on",
        synchronous_commit="on", levels=[level],
    )  # fmt: skip
    assert not level.ok
    assert not report.ok


def test_the_json_document_has_every_field_and_serialises() -> None:
    runs = [_run(1, 100.0, {"coordinator-0": 1.0}), _run(2, 80.0, {"coordinator-0": 3.0})]
    baselines = [_baseline(1, 500.0), _baseline(2, 400.0)]
    report = BenchReport(
        orders=100, runs=2, warmup=50, fail_rate=0.0, kafka="apache", idempotent=True, postgres="pg", fsync="on",
        synchronous_commit="on", levels=[aggregate(W10, runs, baselines)], baselines=baselines,
    )  # fmt: skip
    document = json.loads(json.dumps(report.as_dict()))
    assert document["fsync"] == "on"
    assert document["warmup"] == 50
    assert document["ok"] is True
    (level,) = document["levels"]
    assert level["load"] == {"window": 10}
    assert level["sagas_per_s"] == {"median": 90.0, "min": 80.0, "max": 100.0}
    assert set(level) >= {"p50_ms", "p95_ms", "p99_ms", "cpu_s", "cpu_ms_per_saga", "peak_rss_mb"}
    assert level["ratio_to_baseline"] == {"median": 0.2, "min": 0.2, "max": 0.2}
    assert [r["run"] for r in level["runs"]] == [1, 2]
    assert document["baseline"]["sagas_per_s"] == {"median": 450.0, "min": 400.0, "max": 500.0}
    # pingpong, kafka and postgres: 1 s over 100 sagas.
    assert document["baseline"]["cpu_ms_per_saga"]["median"] == pytest.approx(10.0)


def test_the_window_releases_sagas_in_order_up_to_its_size() -> None:
    book = WindowBook(["a", "b", "c", "d", "e"], window=2)
    assert book.take() == ["a", "b"]
    assert book.take() == []
    assert book.in_flight == 2
    assert book.end("b")
    assert book.take() == ["c"]
    assert book.end("a")
    assert book.end("c")
    assert book.take() == ["d", "e"]
    assert (book.released, book.ended, book.done) == (5, 3, False)
    assert book.end("d")
    assert book.end("e")
    assert book.done
    assert book.take() == []


def test_the_window_ignores_ends_it_did_not_release_and_repeated_ends() -> None:
    book = WindowBook(["a", "b", "c"], window=1)
    assert book.take() == ["a"]
    assert not book.end("b"), "b was never started"
    assert not book.end("someone-elses-saga")
    assert book.take() == []
    assert book.end("a")
    assert not book.end("a"), "an event delivered twice"
    assert book.take() == ["b"]
    assert (book.in_flight, book.ended) == (1, 1)


def test_a_window_as_large_as_the_run_releases_everything_at_once() -> None:
    book = WindowBook(["a", "b"], window=10)
    assert book.take() == ["a", "b"]


def test_a_window_must_hold_a_saga() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        WindowBook(["a"], window=0)


@pytest.mark.parametrize(
    ("elapsed", "due"),
    [(-0.1, 0), (0.0, 1), (0.099, 1), (0.1, 2), (0.25, 3), (0.9, 10), (60.0, 10)],
)
def test_an_open_loop_starts_one_saga_per_interval(elapsed: float, due: int) -> None:
    assert due_starts(10, rate=10.0, elapsed_s=elapsed) == due


def test_levels_may_be_repeated_or_comma_separated() -> None:
    assert parse_levels(["10,50", "200", "50"], integers=True) == [10, 50, 200]
    assert parse_levels(["2.5"], integers=False) == [2.5]


@pytest.mark.parametrize("value", ["0", "-3", "x", "2.5"])
def test_a_window_is_a_positive_whole_number(value: str) -> None:
    with pytest.raises(typer.BadParameter):
        parse_levels([value], integers=True)


def test_a_cell_shows_the_median_and_the_range_unless_the_runs_agree() -> None:
    assert cell(Spread(123.4, 100.0, 150.0)) == "123 [100-150]"
    assert cell(Spread(12.34, 12.34, 12.34)) == "12.3"
    assert cell(Spread(0.1234, 0.1, 0.2)) == "0.12 [0.1-0.2]"
    assert cell(None) == "n/a"


def test_tenth_rates_compare_the_first_and_last_tenth_of_the_ends() -> None:
    steady = [i * 0.01 for i in range(1000)]  # 100 ends/s throughout
    first, last = tenth_rates(steady) or (0.0, 0.0)
    assert first == pytest.approx(100.0)
    assert last == pytest.approx(100.0)
    slowing = steady[:900] + [9.0 + i * 0.02 for i in range(100)]  # the last tenth at 50/s
    first, last = tenth_rates(slowing) or (0.0, 0.0)
    assert first == pytest.approx(100.0)
    assert last == pytest.approx(50.0)
    assert tenth_rates([0.0, 1.0, 2.0]) is None  # too few ends to tell
