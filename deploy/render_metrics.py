"""Draws ``docs/demo-metrics.png``: key metrics of a demo run, as a real Prometheus scraped them.

    python deploy/render_metrics.py            # `make metrics-picture`: demo + Prometheus, draw
    python deploy/render_metrics.py --prometheus-url http://localhost:9090 --since 30m

The first form starts everything it needs (the demo's embedded Kafka and PostgreSQL, or the
ones given by ``--bootstrap-servers`` / ``--database-url``; a Prometheus from ``PATH``, which
``apt-get install prometheus`` provides), submits the orders in waves plus a few poison
messages, and draws the run. The second draws the last ``--since`` of a running stack (e.g.
``deploy/docker-compose.yml``). Four panels: sagas finished by status, step latency p50/p95,
outbox rows pending, dead letters. Needs matplotlib (the ``dev`` extra).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

# deploy/ is not a package: make the repository importable when run as a script.
REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

__all__ = ["DEFAULT_OUT", "Chart", "charts", "main", "render"]

DEFAULT_OUT = REPO / "docs" / "demo-metrics.png"


class RangeQuerier(Protocol):
    """What :func:`render` needs of Prometheus (``PrometheusClient`` has it)."""

    async def query_range(
        self, expr: str, start: float, end: float, step_s: float
    ) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class Series:
    """One query of a chart, its legend template and a scale for its values."""

    expr: str
    legend: str
    scale: float = 1.0
    style: str = "-"


@dataclass(frozen=True)
class Chart:
    """One panel of the picture."""

    title: str
    ylabel: str
    series: tuple[Series, ...]
    steps: bool = False


def charts(window: str) -> list[Chart]:
    """The picture's panels; ``window`` is the rate window (at least 4 scrape intervals)."""
    step_bucket = "saga_step_duration_seconds_bucket"
    return [
        Chart(
            "Sagas finished, by status",
            "sagas (cumulative)",
            (Series("sum by (status) (saga_finished_total)", "{status}"),),
            steps=True,
        ),
        Chart(
            "Step latency (command sent to reply applied)",
            "milliseconds",
            tuple(
                Series(
                    f"histogram_quantile({q}, sum by (le, step) "
                    f'(rate({step_bucket}{{outcome="success"}}[{window}])))',
                    f"{{step}} p{round(q * 100)}",
                    scale=1000.0,
                    style=style,
                )
                for q, style in ((0.5, "-"), (0.95, "--"))
            ),
        ),
        Chart(
            "Sagas in flight and outbox rows not yet published",
            "count (sampled)",
            (
                Series(
                    'sum(max by (status) (saga_instances{status=~"RUNNING|COMPENSATING"}))',
                    "sagas in flight",
                ),
                Series("max(saga_outbox_pending_messages)", "outbox pending", style="--"),
            ),
        ),
        Chart(
            "Dead letters, by reason",
            "records (cumulative)",
            # > 0: the counters of every reason exist from the start, at zero.
            (Series("sum by (reason) (saga_dead_letters_total) > 0", "{reason}"),),
            steps=True,
        ),
    ]


def _legend(template: str, labels: dict[str, str]) -> str:
    return template.format_map({k: labels.get(k, "") for k in _fields(template)}).strip()


def _fields(template: str) -> list[str]:
    import string

    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def _draw(
    ax: Axes, chart: Chart, data: list[tuple[Series, list[dict[str, Any]]]], t0: float, t1: float
) -> None:
    plotted = 0
    for series, results in data:
        for result in sorted(results, key=lambda r: sorted(r["metric"].items())):
            points = [
                (float(at) - t0, float(value) * series.scale)
                for at, value in result["values"]
                if value not in ("NaN", "+Inf", "-Inf")
            ]
            if not points:
                continue
            xs, ys = zip(*points, strict=True)
            label = _legend(series.legend, result["metric"])
            if chart.steps:
                ax.step(xs, ys, where="post", label=label, linestyle=series.style)
            else:
                ax.plot(xs, ys, label=label, linestyle=series.style)
            plotted += 1
    ax.set_title(chart.title, fontsize=11)
    ax.set_ylabel(chart.ylabel)
    ax.set_xlabel("seconds into the run")
    ax.grid(alpha=0.3)
    ax.set_ylim(bottom=0)
    ax.set_xlim(0, t1 - t0)
    if plotted:
        ax.legend(fontsize=7, loc="upper left", ncols=2 if plotted > 4 else 1)
    else:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center")


async def render(
    prometheus: RangeQuerier,
    start: float,
    end: float,
    out: Path,
    *,
    title: str,
    step_s: float = 1.0,
    window: str = "10s",
) -> Path:
    """Query every chart over ``[start, end]`` and write the picture to ``out``."""
    panels = charts(window)
    fetched = [
        [(s, await prometheus.query_range(s.expr, start, end, step_s)) for s in chart.series]
        for chart in panels
    ]
    figure, axes = plt.subplots(2, 2, figsize=(13, 8), dpi=110)
    for ax, chart, data in zip(axes.flat, panels, fetched, strict=True):
        _draw(ax, chart, data, start, end)
    figure.suptitle(title, fontsize=13)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    plt.close(figure)
    return out


async def _from_demo(args: argparse.Namespace) -> Path:
    from rich.console import Console

    from coordinator.demo.observability import observed_demo, submit_in_waves
    from coordinator.demo.runner import DemoOptions, infrastructure

    options = DemoOptions(
        orders=args.orders,
        fail_rate=args.fail_rate,
        bootstrap_servers=args.bootstrap_servers,
        database_url=args.database_url,
        idempotent=None if args.bootstrap_servers is None else True,
        timeout_s=300,
        quiet=True,
    )
    console = Console(stderr=True)
    async with contextlib.AsyncExitStack() as stack:
        if args.kafka == "apache" and args.bootstrap_servers is None:
            from coordinator.devstack import ApacheKafka

            console.log("starting Apache Kafka (KRaft, from the official jars)")
            kafka = await stack.enter_async_context(ApacheKafka())
            options = dataclasses.replace(
                options, bootstrap_servers=kafka.bootstrap_servers, idempotent=True
            )
        infra = await stack.enter_async_context(infrastructure(options, console))
        if args.kafka == "apache":
            infra = dataclasses.replace(infra, broker="Apache")
        cluster, prometheus = await stack.enter_async_context(
            observed_demo(options, infra, console)
        )
        start = time.time() - 2
        console.log(f"submitting {args.orders} orders in {args.waves} waves")
        # Mid-run, so the picture shows dead letters arriving while sagas go on.
        poison = asyncio.create_task(_poison_later(cluster, args.waves * args.wave_interval / 2))
        await submit_in_waves(cluster, args.waves, args.wave_interval)
        await poison
        statuses = await cluster.wait(progress=False)
        await asyncio.sleep(4 * prometheus.scrape_interval_s)  # the end state, scraped
        done = sum(1 for status, _ in statuses.values() if status in ("COMPLETED", "COMPENSATED"))
        console.log(f"{done} of {args.orders} sagas ended; drawing")
        title = (
            f"saga demo: {args.orders} orders, {args.fail_rate:.0%} declined, "
            f"on {infra.broker} Kafka; scraped every {prometheus.scrape_interval_s:g} s "
            "by Prometheus"
        )
        return await render(prometheus, start, time.time(), args.out, title=title)


async def _poison_later(cluster: Any, delay_s: float) -> None:
    from coordinator.demo.observability import send_poison

    await asyncio.sleep(delay_s)
    await send_poison(cluster)


async def _from_url(args: argparse.Namespace) -> Path:
    from coordinator.devstack.prometheus import PrometheusClient

    seconds = _duration_s(args.since)
    end = time.time()
    step = max(1.0, seconds / 600)
    return await render(
        PrometheusClient(args.prometheus_url),
        end - seconds,
        end,
        args.out,
        title=f"saga coordinator: the last {args.since} from {args.prometheus_url}",
        step_s=step,
        window="1m",
    )


def _duration_s(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    return float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and draw the picture."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--prometheus-url", help="draw from a running Prometheus instead")
    parser.add_argument("--since", default="30m", help="with --prometheus-url: how far back")
    parser.add_argument("--orders", type=int, default=300)
    parser.add_argument("--fail-rate", type=float, default=0.1)
    parser.add_argument("--waves", type=int, default=6)
    parser.add_argument("--wave-interval", type=float, default=3.0, help="seconds")
    parser.add_argument(
        "--kafka",
        choices=("embedded", "apache"),
        default="embedded",
        help="the demo's embedded broker, or Apache Kafka from the jars (needs Java)",
    )
    parser.add_argument("--bootstrap-servers")
    parser.add_argument("--database-url")
    args = parser.parse_args(argv)
    runner = _from_url if args.prometheus_url else _from_demo
    out = asyncio.run(runner(args))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
