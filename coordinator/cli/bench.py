"""``saga bench``: throughput, latency and resource use of the order saga, as median [min-max]."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from aiokafka.errors import KafkaError

from coordinator.cli.common import fail, first_line, run_until_terminated
from coordinator.cli.options import BootstrapOpt, DatabaseOpt, VerboseOpt

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from rich.table import Table

    from coordinator.demo.bench import BenchOptions
    from coordinator.demo.bench_report import BenchReport, RunResult, Spread

__all__ = ["bench", "default_baseline_script", "parse_levels"]


class BenchEvents(StrEnum):
    """The lifecycle events the benchmark's coordinator publishes (it needs the terminal ones)."""

    ALL = "all"
    OUTCOMES = "outcomes"


class BenchKafka(StrEnum):
    """Which broker the benchmark runs on."""

    APACHE = "apache"
    EMBEDDED = "embedded"
    EXTERNAL = "external"


METRIC_ROWS = [
    ("sagas_per_s", "sagas/s"),
    ("p50_ms", "p50 ms"),
    ("p95_ms", "p95 ms"),
    ("p99_ms", "p99 ms"),
]


def default_baseline_script() -> Path:
    """``../shared/bench/pingpong.py`` next to the repository this package lives in."""
    return (Path(__file__).resolve().parents[2] / ".." / "shared/bench/pingpong.py").resolve()


def parse_levels(values: Sequence[str], *, integers: bool) -> list[float]:
    """``["10,50", "200"]`` -> ``[10, 50, 200]``: repeated and comma-separated levels, in the
    given order without repeats, each positive (and whole, with ``integers``)."""
    levels: list[float] = []
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                level = float(part)
            except ValueError:
                raise typer.BadParameter(f"{part!r} is not a number") from None
            if level <= 0 or (integers and not level.is_integer()):
                kind = "a whole number" if integers else "a number"
                raise typer.BadParameter(f"{part!r} is not {kind} above 0")
            if level not in levels:
                levels.append(level)
    return levels


def bench(
    orders: Annotated[int, typer.Option(min=1, help="Sagas per run")] = 1000,
    window: Annotated[
        list[str] | None,
        typer.Option(
            "--window",
            "-w",
            help="Closed loop: W sagas in flight, a new one started as one ends. Repeat or "
            "comma-separate to sweep: --window 10,50,200 (default: 100)",
            show_default=False,
        ),
    ] = None,
    rate: Annotated[
        list[str] | None,
        typer.Option(
            "--rate", help="Open loop: sagas started per second, instead of --window (sweepable)"
        ),
    ] = None,
    runs: Annotated[
        int, typer.Option(min=1, help="Runs per level, reported as median and min-max")
    ] = 3,
    warmup: Annotated[
        int,
        typer.Option(
            min=0,
            help="Sagas run once before the measured runs, not measured (a broker just started "
            "spends more CPU on its JIT compiler than on serving); 0: none",
        ),
    ] = 2000,
    kafka: Annotated[
        BenchKafka | None,
        typer.Option(
            case_sensitive=False,
            help="apache: a broker from the jars, idempotent producers; embedded: Tansu, in "
            "memory, no idempotence; external: --bootstrap-servers "
            "(default: external with --bootstrap-servers, else apache)",
            show_default=False,
        ),
    ] = None,
    bootstrap_servers: BootstrapOpt = None,
    database_url: DatabaseOpt = None,
    fsync: Annotated[
        bool,
        typer.Option(
            "--fsync/--no-fsync",
            help="fsync of the PostgreSQL the bench starts (durable, as in production); "
            "an external one keeps its own",
        ),
    ] = True,
    fail_rate: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Fraction of orders whose payment is declined"),
    ] = 0.0,
    events: Annotated[
        BenchEvents,
        typer.Option(
            case_sensitive=False,
            help="Lifecycle events the coordinator publishes (SAGA_EVENTS__PUBLISH): all, or "
            "outcomes (saga.started and the terminal ones)",
        ),
    ] = BenchEvents.ALL,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON document (the log goes to stderr)")
    ] = False,
    plot: Annotated[
        Path | None,
        typer.Option("--plot", help="Draw sagas/s and p99 against the levels into FILE.png"),
    ] = None,
    baseline: Annotated[
        bool,
        typer.Option(
            "--baseline",
            help="Also run the bare pipeline (pingpong.py) on the same servers once per round "
            "and print the ratio",
        ),
    ] = False,
    baseline_script: Annotated[
        Path | None,
        typer.Option(
            "--baseline-script",
            help="The bare pipeline (implies --baseline; default: ../shared/bench/pingpong.py "
            "from the repository root)",
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[
        float, typer.Option(min=1.0, help="Seconds a run may take; sagas not ended count stuck")
    ] = 300.0,
    seed: Annotated[int, typer.Option(help="Random seed of the generated orders")] = 7,
    verbose: VerboseOpt = False,
) -> None:
    """Measure the order saga: sagas/s, p50/p95/p99, CPU and peak RSS of every process.

    Starts Kafka and PostgreSQL (fsync on) unless given, the coordinator and the three example
    participants, then runs each load level --runs times, interleaved, each run with fresh
    orders and the ledger check.
    """
    from service_sdk.kafka_logs import throttle_kafka_logs

    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, stream=sys.stderr)
    # A broker electing leaders for new topics makes aiokafka warn once per retry.
    throttle_kafka_logs()
    try:
        from coordinator.demo.bench import BenchOptions
        from coordinator.demo.bench_report import Load
    except ImportError as exc:  # psutil comes with the embedded extra
        fail(
            f"saga bench needs the embedded extra ({exc}): pip install 'saga-coordinator[embedded]'"
        )
    if window and rate:
        fail("--window and --rate exclude each other")
    loads = (
        [Load("rate", r) for r in parse_levels(rate, integers=False)]
        if rate
        else [Load("window", w) for w in parse_levels(window or ["100"], integers=True)]
    )
    bootstrap = bootstrap_servers or os.environ.get("SAGA_KAFKA__BOOTSTRAP_SERVERS") or None
    database = database_url or os.environ.get("SAGA_DATABASE__URL") or None
    broker = kafka or (BenchKafka.EXTERNAL if bootstrap else BenchKafka.APACHE)
    if broker is BenchKafka.EXTERNAL and not bootstrap:
        fail("--kafka external needs --bootstrap-servers")
    if broker is not BenchKafka.EXTERNAL and bootstrap_servers:
        fail(f"--bootstrap-servers goes with --kafka external, not {broker.value}")
    if database and not fsync:
        fail("--no-fsync applies to the PostgreSQL the bench starts; drop --database-url")
    if plot is not None:
        if importlib.util.find_spec("matplotlib") is None:
            fail("--plot needs matplotlib: pip install 'saga-coordinator[dev]'")
        if not plot.parent.is_dir():
            fail(f"--plot: no directory {plot.parent}")
    script = None
    if baseline or baseline_script is not None:
        script = (baseline_script or default_baseline_script()).resolve()
        if not script.is_file():
            fail(f"no bare pipeline at {script}; give its path with --baseline-script")
    from coordinator.config import Settings
    from coordinator.core.state import LifecyclePublishing

    options = BenchOptions(
        orders=orders,
        loads=tuple(loads),
        runs=runs,
        warmup=warmup,
        kafka=broker.value,
        bootstrap_servers=bootstrap if broker is BenchKafka.EXTERNAL else None,
        idempotent=Settings().kafka.idempotent if broker is BenchKafka.EXTERNAL else None,
        database_url=database,
        fsync=fsync,
        fail_rate=fail_rate,
        events=LifecyclePublishing(events.value),
        seed=seed,
        timeout_s=timeout,
        baseline_script=script,
    )
    report = _run(options, as_json)
    if plot is not None:
        draw(report, plot)
    if not report.ok:
        raise typer.Exit(code=1)


def _run(options: BenchOptions, as_json: bool) -> BenchReport:
    from rich.console import Console

    from coordinator.demo.bench import run_bench
    from coordinator.devstack import DevStackError

    console = Console(stderr=as_json)
    try:
        report = run_until_terminated(run_bench(options, console))
    except KafkaError as exc:
        fail(f"kafka: {first_line(exc)}")
    except DevStackError as exc:
        fail(first_line(exc))
    except RuntimeError as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps(report.as_dict()))
    else:
        console.print(header(report))
        console.print(table(report))
    return report


def header(report: BenchReport) -> str:
    """What ran on what: the broker, PostgreSQL and whether its commits are durable."""
    durable = report.fsync == "on" and report.synchronous_commit != "off"
    durability = (
        f"fsync={report.fsync}, synchronous_commit={report.synchronous_commit}"
        if durable
        else f"[bold yellow]fsync={report.fsync}, synchronous_commit="
        f"{report.synchronous_commit}: commits not durable, figures flattered[/bold yellow]"
    )
    return (
        f"order saga, {report.orders} sagas per run, {report.runs} run(s) per level, "
        f"{report.fail_rate:.0%} declined, after {report.warmup} sagas of warm-up; median "
        "\\[min-max]\n"
        f"Events:     {report.lifecycle_events} lifecycle events published\n"
        f"Kafka:      {report.kafka}\n"
        f"PostgreSQL: {report.postgres}, {durability}"
    )


def _num(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.2g}"


def cell(value: Spread | None) -> str:
    """``median [min-max]``, the median alone when the runs agree, ``n/a`` when unmeasured."""
    if value is None:
        return "n/a"
    if value.low == value.high:
        return _num(value.median)
    return f"{_num(value.median)} [{_num(value.low)}-{_num(value.high)}]"


def table(report: BenchReport) -> Table:
    """One column per load level (and the bare pipeline), one row per metric."""
    from rich.table import Table

    from coordinator.demo.bench_report import DRIVER, TOTAL, spread

    result = Table(title="saga bench", show_header=True, header_style="bold")
    result.add_column("metric", no_wrap=True)
    for level in report.levels:
        result.add_column(level.load.label, justify="right")
    bare = report.baseline_metrics() if report.baselines else None
    if bare is not None:
        result.add_column("pingpong", justify="right")

    def row(name: str, cells: list[str], bare_cell: str = "") -> None:
        result.add_row(name, *cells, *([bare_cell] if bare is not None else []))

    def bare_cpu(role: str) -> str:
        values = [b.cpu_ms_per_saga.get(role) for b in report.baselines]
        return cell(spread(values)) if any(v is not None for v in values) else ""

    levels = report.levels
    for metric, name in METRIC_ROWS:
        bare_cell = cell(bare.get(metric)) if bare is not None and metric in bare else ""
        row(name, [cell(lv.metrics[metric]) for lv in levels], bare_cell)
    if bare is not None:
        row("÷ pingpong", [cell(lv.ratio) for lv in levels], "1")
    row("first 10% sagas/s", [cell(lv.tenths["first_tenth_per_s"]) for lv in levels])
    row("last 10% sagas/s", [cell(lv.tenths["last_tenth_per_s"]) for lv in levels])
    roles = list(dict.fromkeys(role for lv in levels for role in lv.cpu_s))
    names = {role: f"  {role}*" if role == DRIVER else f"  {role}" for role in roles}
    result.add_section()
    row("CPU ms per saga", [cell(lv.cpu_ms_per_saga.get(TOTAL)) for lv in levels], bare_cpu(TOTAL))
    for role in roles:
        row(names[role], [cell(lv.cpu_ms_per_saga.get(role)) for lv in levels], bare_cpu(role))
    if bare is not None:
        row("  pingpong", ["" for _ in levels], bare_cpu("pingpong"))
    result.add_section()
    row("CPU seconds", ["" for _ in levels])
    for role in roles:
        row(names[role], [cell(lv.cpu_s.get(role)) for lv in levels])
    result.add_section()
    row("peak RSS MiB", ["" for _ in levels])
    for role in roles:
        row(names[role], [cell(lv.peak_rss_mb.get(role)) for lv in levels])
    result.add_section()
    row("RSS growth MiB", ["" for _ in levels])
    for role in roles:
        row(names[role], [cell(lv.rss_growth_mb.get(role)) for lv in levels])
    result.add_section()
    row("failed / stuck sagas", [_failures(lv.runs) for lv in levels])
    row("ledger check", [_ledger(lv.runs) for lv in levels])
    result.caption = (
        f"{DRIVER}*: the load generator (this process), not counted in CPU per saga; "
        "n/a: not measurable here (a server on another host)"
    )
    return result


def _failures(runs: Sequence[RunResult]) -> str:
    failed = sum(r.summary.failed for r in runs)
    stuck = sum(r.summary.stuck for r in runs)
    text = f"{failed} / {stuck}"
    return text if failed == stuck == 0 else f"[red]{text}[/red]"


def _ledger(runs: Sequence[RunResult]) -> str:
    bad = [r.run for r in runs if not r.summary.ledger_ok]
    if not bad:
        return f"[green]ok[/green] ({len(runs)}/{len(runs)})"
    return f"[red]FAILED[/red] in run {', '.join(map(str, bad))}"


def draw(report: BenchReport, path: Path) -> None:
    """sagas/s and p99 latency against the load levels, medians with min-max bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = sorted(report.levels, key=lambda lv: lv.load.value)
    xs = [lv.load.value for lv in levels]
    figure, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(7, 6))
    for axes, metric, label in [
        (top, "sagas_per_s", "sagas/s"),
        (bottom, "p99_ms", "p99 latency (ms)"),
    ]:
        _bars(axes, xs, [lv.metrics[metric] for lv in levels])
        axes.set_ylabel(label)
        axes.grid(True, alpha=0.3)
        axes.set_ylim(bottom=0)
    bare = report.baseline_metrics()["sagas_per_s"] if report.baselines else None
    if bare is not None:
        label = f"bare pipeline (pingpong): {bare.median:.0f} sagas/s"
        highest = max((lv.metrics["sagas_per_s"] or bare).high for lv in levels) if levels else 0
        if bare.median <= 3 * highest:
            top.axhline(bare.median, linestyle="--", color="grey", label=label)
        else:  # far above: a line there would flatten the curve that matters
            top.plot([], [], linestyle="--", color="grey", label=f"{label}, off the scale")
        top.legend(loc="best", fontsize=8)
    kind = levels[0].load.kind if levels else "window"
    bottom.set_xlabel("W: sagas in flight" if kind == "window" else "R: sagas started per second")
    if xs and max(xs) / min(xs) >= 20:
        bottom.set_xscale("log")
    top.set_title(
        f"order saga, {report.orders} sagas x {report.runs} runs; Kafka {report.kafka.split(' ')[0]},"
        f" PostgreSQL fsync={report.fsync}",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _bars(axes: Axes, xs: list[float], values: list[Spread | None]) -> None:
    points = [(x, v) for x, v in zip(xs, values, strict=True) if v is not None]
    if not points:
        return
    x = [p[0] for p in points]
    medians = [p[1].median for p in points]
    below = [p[1].median - p[1].low for p in points]
    above = [p[1].high - p[1].median for p in points]
    axes.errorbar(x, medians, yerr=[below, above], marker="o", capsize=4)
