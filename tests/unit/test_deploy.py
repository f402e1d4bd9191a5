"""deploy/ agrees with the code: generated dashboards are committed as generated, every metric
a dashboard or alert reads is one the code defines (and every defined metric is shown), and
every setting the compose file and the Kubernetes manifests pass exists in ``Settings``."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from coordinator.config import Settings
from coordinator.demo.observability import COORDINATOR_JOB, PARTICIPANT_JOB
from coordinator.observability.metrics import CoordinatorMetrics
from saga_defs import default_registry
from service_sdk import ServiceMetrics

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"deploy_{name}", DEPLOY / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


dashboards = _load("dashboards")


def _committed() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(dashboards.DASHBOARD_DIR.glob("*.json"))}


def _all_expressions() -> list[tuple[str, str]]:
    """(where, expr) of every dashboard query and alert rule."""
    found = [
        (f"{name}: {title}", expr)
        for name, model in dashboards.build_dashboards().items()
        for title, expr in dashboards.expressions(model)
    ]
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            found.append((f"alert {rule['alert']}", rule["expr"]))
    return found


def _defined_metric_names() -> dict[str, str]:
    """Sample name -> family name of every metric the coordinator and the SDK define."""
    # Two registries: both define saga_dead_letters_total (one per process kind).
    coordinator, participant = CollectorRegistry(), CollectorRegistry()
    CoordinatorMetrics(coordinator)
    ServiceMetrics(participant, "x")
    names: dict[str, str] = {}
    for family in [*coordinator.collect(), *participant.collect()]:
        suffixes = {
            "counter": ("_total",),
            "histogram": ("_bucket", "_sum", "_count"),
            "gauge": ("",),
        }[family.type]
        for suffix in suffixes:
            names[family.name + suffix] = family.name
    return names


def test_committed_dashboards_are_exactly_what_the_generator_builds() -> None:
    assert _committed() == dashboards.render_dashboards(), (
        "deploy/grafana/dashboards is stale: run `make dashboards`"
    )


def test_there_is_a_dashboard_per_area_and_rows_per_saga() -> None:
    models = dashboards.build_dashboards()
    assert set(models) == {
        "saga-overview.json",
        "saga-latency.json",
        "saga-failures.json",
        "saga-messaging.json",
        "saga-persistence.json",
    }
    for definition in default_registry():
        rows = {
            panel["title"]
            for model in models.values()
            for panel in model["panels"]
            if panel["type"] == "row"
        }
        assert f"Saga: {definition.name}" in rows
        latency = {panel["title"] for panel in models["saga-latency.json"]["panels"]}
        for step in definition.command_steps():
            assert f"Step {step.name} ({step.service})" in latency


def test_panels_have_unique_ids_and_queries_unique_ref_ids() -> None:
    for name, model in dashboards.build_dashboards().items():
        ids = [panel["id"] for panel in model["panels"]]
        assert len(ids) == len(set(ids)), name
        for panel in model["panels"]:
            refs = [target["refId"] for target in panel.get("targets", [])]
            assert len(refs) == len(set(refs)), (name, panel["title"])
            assert all(refs), (name, panel["title"])


def test_every_metric_read_by_a_dashboard_or_alert_is_defined_by_the_code() -> None:
    defined = _defined_metric_names()
    unknown = {
        (where, name)
        for where, expr in _all_expressions()
        for name in dashboards.referenced_metrics(expr)
        if name not in defined and name != "up"
    }
    assert unknown == set()


def test_every_defined_metric_is_on_a_dashboard() -> None:
    shown = {
        _defined_metric_names().get(name)
        for _, expr in _all_expressions()
        for name in dashboards.referenced_metrics(expr)
    }
    families = set(_defined_metric_names().values())
    assert families - shown == set()


def test_the_overview_shows_admission_and_every_participant_service() -> None:
    overview = dashboards.build_dashboards()["saga-overview.json"]
    rows = [panel["title"] for panel in overview["panels"] if panel["type"] == "row"]
    assert rows[:3] == ["All sagas", "Admission and queues", "Participants"]
    queries = {
        panel["title"]: [target["expr"] for target in panel.get("targets", [])]
        for panel in overview["panels"]
    }
    assert 'sum(max by (saga_type) (saga_instances{status="QUEUED"}))' in queries["Queued starts"]
    registry = default_registry()
    for service in registry.services():
        assert f"{service}: outstanding commands and live instances" in queries
        rates = " ".join(queries[f"{service}: pickups, postponed and missed deadlines per second"])
        for definition in registry:
            for step in definition.command_steps():
                # Each service's deadlines and pickups are those of its own steps only.
                assert (f'"{step.name}"' in rates) == (step.service == service), (service, step)


def test_the_overview_has_a_schedules_row_with_ticks_lag_and_pauses() -> None:
    overview = dashboards.build_dashboards()["saga-overview.json"]
    panels = overview["panels"]
    titles = [panel["title"] for panel in panels]
    row = titles.index("Schedules")
    assert [p["type"] for p in panels[:row] if p["type"] == "row"][-1:] == ["row"]
    queries = {
        panel["title"]: " ".join(t["expr"] for t in panel.get("targets", []))
        for panel in panels[row + 1 : row + 6]
    }
    assert 'saga_schedules{state="paused"}' in queries["Paused schedules"]
    assert 'outcome=~"skipped|failed"' in queries["Ticks skipped or failed (last day)"]
    assert "saga_schedule_ticks_total" in queries["Ticks per hour by schedule"]
    assert "saga_schedule_lag_seconds_bucket" in queries["Schedule lag (tick to saga start)"]


_DB_GAUGES = (
    "saga_instances",
    "saga_overdue_sagas",
    "saga_outstanding_commands",
    "saga_participant_instances_alive",
    "saga_outbox_pending_messages",
    "saga_outbox_oldest_age_seconds",
)


def test_gauges_sampled_from_the_database_are_never_summed_over_replicas() -> None:
    # Every coordinator reports the same numbers: ``max`` first, then sum across labels.
    summed = re.compile(
        r"\bsum\s*(?:(?:by|without)\s*\([^)]*\)\s*)?\(\s*(?:" + "|".join(_DB_GAUGES) + r")\b"
    )
    assert [where for where, expr in _all_expressions() if summed.search(expr)] == []


def test_every_alert_has_a_severity_a_summary_and_what_to_do() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    names = [rule["alert"] for rule in alerts]
    assert len(names) == len(set(names))
    assert {
        "SagaStartsQueuedTooLong",
        "ParticipantCommandsQueuedTooLong",
        "ParticipantDown",
    } <= set(names)
    for rule in alerts:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert len(rule["annotations"]["description"]) > 80, rule["alert"]
    tested = yaml.safe_load((DEPLOY / "prometheus" / "alerts_test.yml").read_text())
    covered = {
        case["alertname"]
        for test in tested["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert covered == set(names), "every alert needs a promtool test in which it fires"


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (le, step) (rate(a_bucket{step="x"}[$__rate_interval]))', {"a_bucket"}),
        ('up{job="j"} == 0', {"up"}),
        ("histogram_quantile(0.95, sum by (le) (rate(b_bucket[5m]))) > 1e3", {"b_bucket"}),
        ("max(c) / on (instance) group_left (x) d offset 5m", {"c", "d"}),
    ],
)
def test_metric_names_are_read_from_promql(expr: str, names: set[str]) -> None:
    assert dashboards.referenced_metrics(expr) == names


def test_alert_rules_compare_a_signal_with_a_number() -> None:
    # The observability test evaluates the signal alone; see the header of alerts.yml.
    for where, expr in _all_expressions():
        if where.startswith("alert "):
            assert re.fullmatch(r"(?s).+?\s*(?:==|!=|>=|<=|>|<)\s*-?[0-9.e+]+\s*", expr), where


def test_prometheus_jobs_are_the_ones_dashboards_and_the_demo_use() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert {COORDINATOR_JOB, PARTICIPANT_JOB} <= jobs
    assert dashboards.COORDINATOR_JOB == COORDINATOR_JOB


def _setting_exists(variable: str) -> bool:
    path = variable.removeprefix("SAGA_").lower().split("__")
    model: type[BaseModel] = Settings
    for index, part in enumerate(path):
        field = model.model_fields.get(part)
        if field is None:
            return False
        annotation: Any = field.annotation
        if index < len(path) - 1:
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                return False
            model = annotation
    return True


def _saga_variables(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(key, str) and key.startswith("SAGA_"):
                found.add(key)
            if key == "name" and isinstance(value, str) and value.startswith("SAGA_"):
                found.add(value)
            found |= _saga_variables(value)
    elif isinstance(node, list):
        for item in node:
            found |= _saga_variables(item)
    return found


def test_every_setting_in_compose_and_kubernetes_exists() -> None:
    documents = [yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())]
    for manifest in sorted((DEPLOY / "k8s").glob("*.yaml")):
        documents.extend(yaml.safe_load_all(manifest.read_text()))
    variables = set().union(*(_saga_variables(d) for d in documents))
    assert "SAGA_DATABASE__URL" in variables
    assert "SAGA_METRICS__PORT" in variables
    assert {v for v in variables if not _setting_exists(v)} == set()


def test_kubernetes_runs_two_replicas_probed_and_scraped() -> None:
    deployment = yaml.safe_load((DEPLOY / "k8s" / "deployment.yaml").read_text())
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    pod = spec["template"]
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == Settings().metrics.port
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(ports["metrics"])
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] in ports
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in (DEPLOY / "k8s").glob("*.yaml")} - {"kustomization.yaml"}


def test_dashboards_build_for_sagas_of_every_shape() -> None:
    from saga_defs import trip_registry

    models = dashboards.build_dashboards(trip_registry())
    latency = {panel["title"] for panel in models["saga-latency.json"]["panels"]}
    # Members of a parallel group have their panels; waits, timers and child sagas none.
    assert {"Step book_flight (flights)", "Step rent_car (cars)"} <= latency
    assert not any("reminder_timer" in title for title in latency)
