"""The metrics, the dashboards and the alert rules, checked against a real Prometheus.

A demo (a coordinator and the three participants as processes, 100 orders, 10% declined) and
a few poison messages run under a Prometheus started here (scrape and rule evaluation every
second, ``deploy/prometheus/alerts.yml`` loaded). Then every expression of every dashboard and
alert rule is evaluated through Prometheus' HTTP API: each must return series and read only
metric names Prometheus has stored. ``promtool`` checks and unit-tests the rules and
``docker-compose`` validates the compose file. Nothing here skips when a tool is missing:
``.ci/run`` installs them (Debian's ``prometheus`` and ``docker-compose`` packages).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from rich.console import Console

from coordinator.demo.observability import (
    COORDINATOR_JOB,
    PARTICIPANT_JOB,
    observed_demo,
    send_poison,
)
from coordinator.demo.runner import DemoOptions, Infrastructure
from coordinator.devstack.prometheus import PrometheusQueryError, PrometheusServer
from tests.support.waiting import eventually

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
RATE_INTERVAL = "1m"
"""What ``$__rate_interval`` stands for here (Grafana computes it from the scrape interval)."""
_COMPARISON = re.compile(r"(?s)^(?P<signal>.+?)\s*(?:==|!=|>=|<=|>|<)\s*-?[0-9.e+]+\s*$")


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"deploy_{name}", DEPLOY / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"`{name}` is not installed: apt-get install {package} (.ci/run installs it)",
            pytrace=False,
        )
    return path


def _run(argv: Sequence[str]) -> None:
    result = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=120, cwd=REPO, check=False
    )
    assert result.returncode == 0, f"{' '.join(argv)}:\n{result.stdout}{result.stderr}"


def test_promtool_checks_the_alert_rules() -> None:
    _run([_tool("promtool", "prometheus"), "check", "rules", str(ALERTS)])


def test_the_alert_rules_pass_their_promtool_unit_tests() -> None:
    _run(
        [_tool("promtool", "prometheus"), "test", "rules", str(ALERTS.with_name("alerts_test.yml"))]
    )


def test_promtool_checks_the_compose_stacks_prometheus_config() -> None:
    _run(
        [
            _tool("promtool", "prometheus"),
            "check",
            "config",
            str(ALERTS.with_name("prometheus.yml")),
        ]
    )


def test_docker_compose_validates_the_compose_file() -> None:
    compose = _tool("docker-compose", "docker-compose")
    _run([compose, "-f", str(DEPLOY / "docker-compose.yml"), "config", "-q"])


def _expressions(dashboards: ModuleType) -> list[tuple[str, str]]:
    """(where, expression to evaluate) for every dashboard query and alert rule; an alert's
    comparison is dropped, since a healthy system makes it return nothing."""
    found = [
        (f"{name} / {title}", expr)
        for name, model in dashboards.build_dashboards().items()
        for title, expr in dashboards.expressions(model)
    ]
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            match = _COMPARISON.match(rule["expr"])
            assert match is not None, f"alert {rule['alert']}: not `signal op number`"
            found.append((f"alert {rule['alert']}", match["signal"]))
    return [(where, expr.replace("$__rate_interval", RATE_INTERVAL)) for where, expr in found]


async def _scalar(prometheus: PrometheusServer, expr: str) -> float:
    result = await prometheus.query(expr)
    return float(result[0]["value"][1]) if result else float("nan")


async def _until(
    prometheus: PrometheusServer, expr: str, ok: Callable[[float], bool], timeout_s: float = 30
) -> None:
    async def holds() -> bool:
        value = await _scalar(prometheus, expr)
        assert ok(value), f"{expr} is {value}"
        return True

    await eventually(holds, timeout=timeout_s, interval=0.5, what=expr)


async def _alerts(prometheus: PrometheusServer) -> set[str]:
    """The alerts firing now. A pending one (its ``for:`` not yet over) is no alert: e.g.
    ParticipantDown is pending for a moment when a command is out before the coordinator has
    read the participant's first heartbeat, which is what its two minutes are for."""
    data = await prometheus.api("alerts")
    return {alert["labels"]["alertname"] for alert in data["alerts"] if alert["state"] == "firing"}


LEAP_DAY_SCHEDULE = json.dumps(
    [{"name": "leap-day-order", "saga_type": "order", "cron": "0 0 29 2 *"}]
)


@pytest.mark.timeout(400)
async def test_every_dashboard_and_alert_expression_has_data_in_a_real_prometheus(
    kafka: Any, topic_prefix: str, database_url: str, tmp_path: Path
) -> None:
    dashboards = _load("dashboards")
    pictures = _load("render_metrics")
    infra = Infrastructure(
        kafka.bootstrap_servers, kafka.supports_idempotence, database_url, kafka.kind
    )
    options = DemoOptions(
        orders=100,
        fail_rate=0.1,
        timeout_s=180,
        topic_prefix=topic_prefix,
        # A declared schedule, so the Schedules panels have series (it ticks on 29 February
        # only: nothing fires during the run).
        environment=(("SAGA_SCHEDULES__DECLARED", LEAP_DAY_SCHEDULE),),
    )
    problems: list[str] = []
    async with observed_demo(options, infra, Console(quiet=True), rule_files=[ALERTS]) as (
        cluster,
        prometheus,
    ):
        started = time.time() - 2
        await cluster.submit()
        poison = await send_poison(cluster)
        summary = await cluster.summarize(await cluster.wait(progress=False))
        finished = len(cluster.order_ids) + 1  # and the warm-up saga
        # Everything has happened; wait until Prometheus has scraped the end state.
        await _until(prometheus, "sum(saga_finished_total)", lambda v: v >= finished)
        await _until(prometheus, "sum(saga_dead_letters_total)", lambda v: v >= poison)
        await _until(
            prometheus,
            'sum(max by (saga_type, status) (saga_instances{status=~"COMPLETED|COMPENSATED"}))',
            lambda v: v >= finished,
        )
        await _until(prometheus, f'count(up{{job="{PARTICIPANT_JOB}"}} == 1)', lambda v: v == 3)
        await _until(prometheus, f'count(up{{job="{COORDINATOR_JOB}"}} == 1)', lambda v: v == 1)

        stored = await prometheus.metric_names()
        checked = 0
        for where, expr in _expressions(dashboards):
            unknown = dashboards.referenced_metrics(expr) - stored
            if unknown:
                problems.append(f"{where}: reads metrics Prometheus never saw: {sorted(unknown)}")
            try:
                series = await prometheus.query(expr)
            except PrometheusQueryError as error:
                problems.append(f"{where}: {error}")
                continue
            if not series:
                problems.append(f"{where}: no series for {expr}")
            checked += 1

        rules = await prometheus.api("rules")
        loaded = [rule for group in rules["groups"] for rule in group["rules"]]
        assert {rule["health"] for rule in loaded} == {"ok"}
        assert len(loaded) == len(yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"])

        # A healthy run that dead-lettered poison raises exactly that alert.
        async def firing() -> set[str]:
            active = await _alerts(prometheus)
            assert "SagaDeadLettersGrowing" in active, f"alerts: {active}"
            return active

        active = await eventually(firing, timeout=30, interval=0.5, what="the dead-letter alert")
        assert active == {"SagaDeadLettersGrowing"}

        picture = await pictures.render(
            prometheus, started, time.time(), tmp_path / "demo-metrics.png", title="test run"
        )
        assert picture.stat().st_size > 20_000

    assert problems == [], "\n".join(problems)
    assert checked > 50
    assert summary.ledger_problems == []
    assert (summary.completed, summary.compensated, summary.failed, summary.stuck) == (
        90,
        10,
        0,
        0,
    )
    assert all(c.returncode == 0 for c in cluster.children), "a process did not exit cleanly"


async def test_overdue_sagas_are_counted_per_type_after_the_grace_period(
    database_url: str,
) -> None:
    from datetime import UTC, datetime, timedelta

    from coordinator.core.state import SagaInstance, SagaStatus
    from coordinator.store.database import create_engine
    from coordinator.store.migrate import upgrade_database
    from coordinator.store.saga_store import SagaStore

    await upgrade_database(database_url)
    now = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

    def saga(saga_id: str, status: SagaStatus, late_by: timedelta) -> SagaInstance:
        return SagaInstance(
            saga_id=saga_id,
            saga_type="order",
            definition_version=1,
            status=status,
            data={},
            created_at=now - timedelta(hours=1),
            updated_at=now - timedelta(hours=1),
            current_step="charge_payment" if status is SagaStatus.RUNNING else None,
            command_id="c" if status is SagaStatus.RUNNING else None,
            attempt=1,
            deadline_at=now - late_by if status is SagaStatus.RUNNING else None,
        )

    engine = create_engine(database_url, pool_size=1)
    store = SagaStore(engine)
    try:
        async with engine.begin() as conn:
            await store.insert_sagas(
                conn,
                [
                    saga("late", SagaStatus.RUNNING, timedelta(minutes=2)),
                    saga("just-due", SagaStatus.RUNNING, timedelta(seconds=5)),
                    saga("done", SagaStatus.COMPLETED, timedelta(0)),
                ],
            )
        async with engine.connect() as conn:
            assert await store.count_overdue(conn, now, timedelta(seconds=30)) == {"order": 1}
            assert await store.count_overdue(conn, now, timedelta(minutes=5)) == {}
    finally:
        await engine.dispose()


async def test_the_metrics_server_serves_the_registry_and_frees_its_port() -> None:
    import urllib.request

    from prometheus_client import CollectorRegistry, Counter

    from service_sdk import MetricsServer

    registry = CollectorRegistry()
    Counter("saga_probe_total", "A test counter.", registry=registry).inc(3)
    server = MetricsServer(registry, host="127.0.0.1", port=0)
    async with server:
        port = server.port
        url = f"http://127.0.0.1:{port}/metrics"
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
        assert b"saga_probe_total 3.0" in body
    # stop() released the port: a restarted process can serve on it again.
    async with MetricsServer(registry, host="127.0.0.1", port=port) as again:
        assert again.port == port
