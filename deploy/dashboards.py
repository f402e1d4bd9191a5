"""Builds the Grafana dashboards in ``deploy/grafana/dashboards/`` from code.

``make dashboards`` (``python deploy/dashboards.py``) rewrites the JSON files; ``--check``
exits non-zero when they differ from what this builds, and ``tests/unit/test_deploy.py``
fails in that case, so the committed dashboards never drift from the code. Every saga
definition in ``saga_defs.default_registry()`` gets its own rows (per step, per participant
service): a new saga has its panels without anyone editing JSON.

The dashboards are built with the Grafana Foundation SDK (``grafana-foundation-sdk``, the
``dev`` extra), for the Grafana 11.6 schema. Every query reads the metrics of
``coordinator/observability/metrics.py`` and ``service_sdk/metrics.py``; the observability
test evaluates each of them against a real Prometheus. Gauges sampled from the database are
reported by every coordinator replica, so they are aggregated with ``max``, counters with
``sum``.

The overview shows a spike being absorbed: starts waiting for admission (QUEUED, then unread
in saga.requests) beside the sagas in flight, and per participant service its queue of
commands (queued, picked up), its live instances and its postponed against missed deadlines.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from grafana_foundation_sdk.builders import common, dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import (
    BigValueColorMode,
    BigValueGraphMode,
    LegendDisplayMode,
    LegendPlacement,
    StackingMode,
)
from grafana_foundation_sdk.models.dashboard import (
    DashboardLinkType,
    DataSourceRef,
    Threshold,
    ThresholdsMode,
)

# deploy/ is not a package: make the repository importable when run as a script.
REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from coordinator.core.definition import SagaRegistry  # noqa: E402
from saga_defs import default_registry  # noqa: E402

__all__ = [
    "DASHBOARD_DIR",
    "DashboardSpec",
    "Panel",
    "Query",
    "build_dashboards",
    "expressions",
    "main",
    "referenced_metrics",
    "render_dashboards",
]

DASHBOARD_DIR = REPO / "deploy" / "grafana" / "dashboards"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="prometheus")
"""The datasource provisioned by ``deploy/grafana/provisioning/datasources``."""
RATE = "$__rate_interval"
COORDINATOR_JOB = "saga-coordinator"

Kind = Literal["timeseries", "stat"]


@dataclass(frozen=True)
class Query:
    """One PromQL query of a panel and its legend."""

    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    """A panel: a title, its queries and how to show them."""

    title: str
    queries: tuple[Query, ...]
    unit: str = "short"
    kind: Kind = "timeseries"
    width: int = 12
    description: str = ""
    stacked: bool = False
    red_above: float | None = None
    """For stats: the value from which the panel turns red."""


@dataclass(frozen=True)
class DashboardSpec:
    """A dashboard: rows of panels."""

    uid: str
    title: str
    description: str
    rows: tuple[tuple[str, tuple[Panel, ...]], ...] = field(default_factory=tuple)


def _q(expr: str, legend: str = "") -> Query:
    return Query(expr, legend)


def _quantiles(metric: str, selector: str, by: str = "") -> tuple[Query, ...]:
    """p50, p95 and p99 of a histogram, optionally per label ``by``."""
    grouping = f"le, {by}" if by else "le"
    matcher = f"{{{selector}}}" if selector else ""
    return tuple(
        _q(
            f"histogram_quantile({q}, sum by ({grouping}) "
            f"(rate({metric}_bucket{matcher}[{RATE}])))",
            f"p{round(q * 100)}" + (f" {{{{{by}}}}}" if by else ""),
        )
        for q in (0.5, 0.95, 0.99)
    )


def _sel(**labels: str) -> str:
    return ", ".join(f'{name}="{value}"' for name, value in labels.items())


def _service_step_rate(metric: str, registry: SagaRegistry, service: str) -> str:
    """The rate of a ``{saga_type, step}`` counter over the steps whose commands go to
    ``service``, summed over every saga type (step names match ``[a-z][a-z0-9_]*``)."""
    parts = [
        f'rate({metric}{{{_sel(saga_type=definition.name)}, step=~"{"|".join(steps)}"}}[{RATE}])'
        for definition in registry
        if (steps := [step.name for step in definition.command_steps() if step.service == service])
    ]
    return f"sum({' or '.join(parts)})"


QUEUED = 'saga_instances{status="QUEUED"}'
IN_FLIGHT = 'saga_instances{status=~"RUNNING|COMPENSATING"}'
START_REQUEST_LAG = 'saga_consumer_lag_messages{topic=~".*saga[.]requests"}'
"""Lag on ``<prefix>saga.requests``: start requests the coordinators have not read."""


# -- the dashboards ----------------------------------------------------------------------------


def _overview(registry: SagaRegistry) -> DashboardSpec:
    summary = (
        Panel(
            "Sagas in flight",
            (
                _q(
                    "sum(max by (saga_type, status) "
                    '(saga_instances{status=~"RUNNING|COMPENSATING"}))'
                ),
            ),
            kind="stat",
            width=5,
            description="RUNNING and COMPENSATING sagas in the database.",
        ),
        Panel(
            "FAILED sagas (need an operator)",
            (_q('sum(max by (saga_type) (saga_instances{status="FAILED"}))'),),
            kind="stat",
            width=5,
            red_above=1,
            description="Compensation could not finish: resume or retry them with the CLI.",
        ),
        Panel(
            "Overdue sagas",
            (_q("sum(max by (saga_type) (saga_overdue_sagas))"),),
            kind="stat",
            width=5,
            red_above=1,
            description="Awaiting a reply past their deadline plus the grace period: "
            "the deadline scanner is not keeping up.",
        ),
        Panel(
            "Dead letters (last hour)",
            (_q("sum(increase(saga_dead_letters_total[1h]))"),),
            kind="stat",
            width=5,
            red_above=1,
        ),
        Panel(
            "Coordinators up",
            (_q(f'sum(up{{job="{COORDINATOR_JOB}"}})'),),
            kind="stat",
            width=4,
        ),
    )
    rows: list[tuple[str, tuple[Panel, ...]]] = [
        ("All sagas", summary),
        ("Admission and queues", _admission()),
        ("Participants", _participants(registry)),
        ("Schedules", _schedules()),
    ]
    for definition in registry:
        t = _sel(saga_type=definition.name)
        rows.append(
            (
                f"Saga: {definition.name}",
                (
                    Panel(
                        "Started and finished per second",
                        (
                            _q(f"sum(rate(saga_started_total{{{t}}}[{RATE}]))", "started"),
                            _q(
                                f"sum by (status) (rate(saga_finished_total{{{t}}}[{RATE}]))",
                                "{{status}}",
                            ),
                        ),
                        unit="ops",
                    ),
                    Panel(
                        "In flight by status",
                        (
                            _q(
                                "max by (status) "
                                f'(saga_instances{{{t}, status=~"RUNNING|COMPENSATING"}})',
                                "{{status}}",
                            ),
                        ),
                        stacked=True,
                    ),
                    Panel(
                        "Saga duration",
                        _quantiles("saga_duration_seconds", t),
                        unit="s",
                        width=24,
                        description="Start to COMPLETED, COMPENSATED or FAILED.",
                    ),
                ),
            )
        )
    return DashboardSpec(
        "saga-overview",
        "Saga coordinator / Overview",
        "Throughput, sagas in flight, admission and participant queues, and what needs an "
        "operator.",
        tuple(rows),
    )


def _admission() -> tuple[Panel, ...]:
    """Starts beyond the caps on sagas in flight wait: QUEUED, then unread in saga.requests."""
    return (
        Panel(
            "Queued starts",
            (_q(f"sum(max by (saga_type) ({QUEUED}))"),),
            kind="stat",
            width=6,
            description="Sagas waiting for admission (QUEUED): the caps on sagas in flight "
            "(SAGA_ADMISSION__MAX_IN_FLIGHT*, __MAX_OUTSTANDING_PER_SERVICE) are full. A spike "
            "being absorbed rises here and drains; a backlog that never drains means the "
            "capacity is too small for the load (alert SagaStartsQueuedTooLong).",
        ),
        Panel(
            "Start requests unread in Kafka",
            (_q(f"sum({START_REQUEST_LAG})"),),
            kind="stat",
            width=6,
            description="Consumer lag on saga.requests. While SAGA_ADMISSION__QUEUED_HIGH_WATER "
            "sagas are QUEUED the coordinators stop reading start requests: the rest of a "
            "spike waits in Kafka, nothing is lost.",
        ),
        Panel(
            "Commands queued at participants",
            (_q('sum(max by (service) (saga_outstanding_commands{state="queued"}))'),),
            kind="stat",
            width=6,
            description="Sagas awaiting a command their participant has not picked up yet. "
            "Their deadlines are postponed while the participant is alive: a capacity "
            "problem, not a failure.",
        ),
        Panel(
            "Participant services with no live instance",
            (_q("sum(max by (service) (saga_participant_instances_alive) == bool 0)"),),
            kind="stat",
            width=6,
            red_above=1,
            description="Services no instance of which sent a heartbeat within the liveness "
            "window (SAGA_DEADLINES__LIVENESS_WINDOW_S): their commands' deadlines are "
            "missed, not postponed.",
        ),
        Panel(
            "Queued starts and sagas in flight by saga type",
            (
                _q(f"max by (saga_type) ({QUEUED})", "queued {{saga_type}}"),
                _q(
                    f"sum by (saga_type) (max by (saga_type, status) ({IN_FLIGHT}))",
                    "in flight {{saga_type}}",
                ),
            ),
            description="In flight: RUNNING and COMPENSATING, held at the caps during a spike "
            "while the queued starts rise and drain.",
        ),
        Panel(
            "Start requests waiting in Kafka (lag on saga.requests)",
            (_q(f"sum by (topic) ({START_REQUEST_LAG})", "{{topic}}"),),
            description="Start requests not read yet, summed over the partitions.",
        ),
    )


def _schedules() -> tuple[Panel, ...]:
    """Sagas started on a schedule: ticks fired, missed ticks skipped, lag, pauses."""
    return (
        Panel(
            "Active schedules",
            (_q('max(saga_schedules{state="active"})'),),
            kind="stat",
            width=6,
            description="Declared schedules not paused (saga schedules list).",
        ),
        Panel(
            "Paused schedules",
            (_q('max(saga_schedules{state="paused"})'),),
            kind="stat",
            width=6,
            description="Paused by an operator (saga schedules pause): no coordinator fires "
            "them, and their ticks in the pause are not caught up.",
        ),
        Panel(
            "Ticks skipped or failed (last day)",
            (_q('sum(increase(saga_schedule_ticks_total{outcome=~"skipped|failed"}[1d]))'),),
            kind="stat",
            width=12,
            red_above=1,
            description="Skipped: missed while no coordinator ran and not caught up "
            "(the schedule's catch_up policy, or beyond SAGA_SCHEDULES__MAX_CATCH_UP). "
            "Failed: the tick's start data could not be built or did not fit the saga "
            "(see the coordinator's log).",
        ),
        Panel(
            "Ticks per hour by schedule",
            (
                _q(
                    "sum by (schedule, outcome) (increase(saga_schedule_ticks_total[1h]))",
                    "{{schedule}} {{outcome}}",
                ),
            ),
            description="One saga is started per fired tick, however many coordinators run.",
        ),
        Panel(
            "Schedule lag (tick to saga start)",
            _quantiles("saga_schedule_lag_seconds", "", by="schedule"),
            unit="s",
            description="Within a scheduler interval (SAGA_SCHEDULES__INTERVAL_S) normally; "
            "caught-up ticks after an outage show how long it was.",
        ),
    )


def _participants(registry: SagaRegistry) -> tuple[Panel, ...]:
    """Per participant service: its queue as the coordinators see it, and its liveness."""
    panels: list[Panel] = []
    for service in sorted(registry.services()):
        s = _sel(service=service)
        panels.append(
            Panel(
                f"{service}: outstanding commands and live instances",
                (
                    _q(
                        f'max(saga_outstanding_commands{{{s}, state="queued"}})',
                        "queued (not picked up)",
                    ),
                    _q(
                        f'max(saga_outstanding_commands{{{s}, state="picked_up"}})',
                        "picked up",
                    ),
                    _q(f"max(saga_participant_instances_alive{{{s}}})", "live instances"),
                ),
                description="Sagas awaiting a command of this service, by whether an instance "
                "reported picking it up (heartbeats), and the instances heard from within the "
                "liveness window.",
            )
        )
        panels.append(
            Panel(
                f"{service}: pickups, postponed and missed deadlines per second",
                (
                    _q(
                        _service_step_rate("saga_commands_picked_up_total", registry, service),
                        "picked up",
                    ),
                    _q(
                        _service_step_rate("saga_deadlines_postponed_total", registry, service),
                        "deadlines postponed",
                    ),
                    _q(
                        _service_step_rate("saga_deadlines_fired_total", registry, service),
                        "deadlines missed",
                    ),
                ),
                unit="ops",
                description="Postponed: the command still waited in the queue of a live "
                "instance (capacity). Missed: no reply in time from a picked-up command or a "
                "service with no live instance; the command is retried, then the step fails.",
            )
        )
    return tuple(panels)


def _latency(registry: SagaRegistry) -> DashboardSpec:
    rows: list[tuple[str, tuple[Panel, ...]]] = []
    for definition in registry:
        t = _sel(saga_type=definition.name)
        panels = [
            Panel(
                "Saga duration by status (p95)",
                (
                    _q(
                        "histogram_quantile(0.95, sum by (le, status) "
                        f"(rate(saga_duration_seconds_bucket{{{t}}}[{RATE}])))",
                        "{{status}}",
                    ),
                ),
                unit="s",
            ),
            Panel(
                "Step duration by step (p95)",
                (
                    _q(
                        "histogram_quantile(0.95, sum by (le, step) "
                        "(rate(saga_step_duration_seconds_bucket"
                        f'{{{t}, outcome="success"}}[{RATE}])))',
                        "{{step}}",
                    ),
                ),
                unit="s",
                description="From the last send of a step's command to its successful reply.",
            ),
        ]
        for step in definition.command_steps():
            panels.append(
                Panel(
                    f"Step {step.name} ({step.service})",
                    _quantiles(
                        "saga_step_duration_seconds",
                        _sel(saga_type=definition.name, step=step.name, outcome="success"),
                    ),
                    unit="s",
                    width=8,
                )
            )
        for service in definition.services():
            panels.append(
                Panel(
                    f"Handlers of {service}",
                    _quantiles(
                        "saga_participant_handler_duration_seconds",
                        _sel(service=service),
                        by="message_type",
                    ),
                    unit="s",
                    width=8,
                    description="The participant's transaction around its handler.",
                )
            )
        rows.append((f"Saga: {definition.name}", tuple(panels)))
    return DashboardSpec(
        "saga-latency",
        "Saga coordinator / Latency",
        "Saga, step and handler latency quantiles per saga definition.",
        tuple(rows),
    )


def _failures(registry: SagaRegistry) -> DashboardSpec:
    rows: list[tuple[str, tuple[Panel, ...]]] = [
        (
            "Dead letters",
            (
                Panel(
                    "Dead letters per second by topic and reason",
                    (
                        _q(
                            f"sum by (topic, reason) (rate(saga_dead_letters_total[{RATE}]))",
                            "{{topic}} {{reason}}",
                        ),
                    ),
                    unit="ops",
                ),
                Panel(
                    "Dead letters since start by topic and reason",
                    (
                        _q(
                            "sum by (topic, reason) (saga_dead_letters_total)",
                            "{{topic}} {{reason}}",
                        ),
                    ),
                    description="Replay them with the CLI once the cause is fixed.",
                ),
                Panel(
                    "Participant handler errors per second",
                    (
                        _q(
                            "sum by (service, message_type) "
                            f"(rate(saga_participant_handler_errors_total[{RATE}]))",
                            "{{service}} {{message_type}}",
                        ),
                    ),
                    unit="ops",
                    width=24,
                    description="Unexpected handler errors; each is retried, then dead-lettered.",
                ),
            ),
        )
    ]
    for definition in registry:
        t = _sel(saga_type=definition.name)
        rows.append(
            (
                f"Saga: {definition.name}",
                (
                    Panel(
                        "Ended per second by status",
                        (
                            _q(
                                f"sum by (status) (rate(saga_finished_total{{{t}}}[{RATE}]))",
                                "{{status}}",
                            ),
                        ),
                        unit="ops",
                        stacked=True,
                    ),
                    Panel(
                        "FAILED sagas",
                        (_q(f'max(saga_instances{{{t}, status="FAILED"}})', "FAILED"),),
                    ),
                    Panel(
                        "Step failures per second by step",
                        (
                            _q(
                                f"sum by (step) (rate(saga_step_failures_total{{{t}}}[{RATE}]))",
                                "{{step}}",
                            ),
                        ),
                        unit="ops",
                    ),
                    Panel(
                        "Compensations and retries sent per second",
                        (
                            _q(
                                "sum by (service, purpose) (rate(saga_commands_sent_total"
                                f'{{{t}, purpose=~"compensation|retry"}}[{RATE}]))',
                                "{{purpose}} {{service}}",
                            ),
                        ),
                        unit="ops",
                    ),
                    Panel(
                        "Deadlines missed and postponed per second by step",
                        (
                            _q(
                                f"sum by (step) (rate(saga_deadlines_fired_total{{{t}}}[{RATE}]))",
                                "missed {{step}}",
                            ),
                            _q(
                                "sum by (step) "
                                f"(rate(saga_deadlines_postponed_total{{{t}}}[{RATE}]))",
                                "postponed {{step}}",
                            ),
                        ),
                        unit="ops",
                        description="Missed: retried, then the step fails. Postponed: the "
                        "command still waited in a live participant's queue (not a failure).",
                    ),
                    Panel(
                        "Duplicate, late and stale replies per second",
                        (
                            _q(
                                "sum by (kind) "
                                f"(rate(saga_unexpected_replies_total{{{t}}}[{RATE}]))",
                                "{{kind}}",
                            ),
                        ),
                        unit="ops",
                    ),
                ),
            )
        )
    return DashboardSpec(
        "saga-failures",
        "Saga coordinator / Failures, compensations and dead letters",
        "What went wrong, what was undone, and what waits for an operator.",
        tuple(rows),
    )


def _messaging(registry: SagaRegistry) -> DashboardSpec:
    coordinator = (
        Panel(
            "Replies per second by outcome",
            (
                _q(
                    f"sum by (saga_type, outcome) (rate(saga_replies_total[{RATE}]))",
                    "{{saga_type}} {{outcome}}",
                ),
            ),
            unit="ops",
        ),
        Panel(
            "Signals per second by outcome",
            (
                _q(
                    f"sum by (saga_type, outcome) (rate(saga_signals_total[{RATE}]))",
                    "{{saga_type}} {{outcome}}",
                ),
            ),
            unit="ops",
            description="From saga.signals (services, the HTTP API, saga signal): received by "
            "a wait, kept for a wait ahead, or rejected (dead-lettered to saga.signals.dlq).",
        ),
        Panel(
            "Commands sent per second by service and purpose",
            (
                _q(
                    f"sum by (service, purpose) (rate(saga_commands_sent_total[{RATE}]))",
                    "{{service}} {{purpose}}",
                ),
            ),
            unit="ops",
        ),
        Panel(
            "Consumer lag by partition",
            (
                _q(
                    "sum by (topic, partition) (saga_consumer_lag_messages)",
                    "{{topic}}[{{partition}}]",
                ),
            ),
            description="Records behind the log end, per partition, on its current owner.",
        ),
        Panel(
            "Consumed batch size",
            _quantiles("saga_consumer_batch_size", ""),
            description="Records per getmany batch, applied in one transaction.",
        ),
        Panel(
            "Outbox delay (commit to publish)",
            _quantiles("saga_outbox_delay_seconds", ""),
            unit="s",
        ),
        Panel(
            "Relay publish latency (send to last ack)",
            _quantiles("saga_relay_publish_duration_seconds", ""),
            unit="s",
        ),
        Panel(
            "Relay batch size",
            _quantiles("saga_relay_batch_size", ""),
        ),
        Panel(
            "Redelivered messages per second",
            (
                _q(
                    f"sum(rate(saga_redelivered_messages_total[{RATE}]))",
                    "recognised by the inbox",
                ),
            ),
            unit="ops",
        ),
        Panel(
            "Stale replies per second by reason (they matched nothing the saga awaits)",
            (
                _q(
                    f"sum by (reason) (rate(saga_stale_replies_total[{RATE}]))",
                    "{{reason}}",
                ),
            ),
            unit="ops",
        ),
        Panel(
            "Unknown fields ignored per second (tolerant reader), by message type and field",
            (
                _q(
                    f"sum by (message_type, field) (rate(saga_unknown_fields_total[{RATE}]))",
                    "{{message_type}} {{field}}",
                ),
            ),
            unit="ops",
        ),
        Panel(
            "Parked sagas (their definition version is not loaded by the coordinator)",
            (
                _q(
                    "max by (saga_type, definition_version) (saga_parked_sagas)",
                    "{{saga_type}} v{{definition_version}} sagas",
                ),
                _q(f"sum(rate(saga_parked_replies_total[{RATE}]))", "replies parked per second"),
            ),
        ),
    )
    services: list[Panel] = []
    for service in registry.services():
        services.append(
            Panel(
                f"{service}: commands per second by result",
                (
                    _q(
                        "sum by (message_type, result) (rate(saga_participant_commands_total"
                        f"{{{_sel(service=service)}}}[{RATE}]))",
                        "{{message_type}} {{result}}",
                    ),
                ),
                unit="ops",
                width=8,
            )
        )
    return DashboardSpec(
        "saga-messaging",
        "Saga coordinator / Messaging",
        "Kafka side: replies, commands, consumer lag, batching, the outbox relay, participants.",
        (("Coordinator", coordinator), ("Participants", tuple(services))),
    )


def _persistence(registry: SagaRegistry) -> DashboardSpec:
    panels = (
        Panel(
            "Outbox rows not yet published",
            (_q("max(saga_outbox_pending_messages)", "pending"),),
        ),
        Panel(
            "Age of the oldest unpublished outbox row",
            (_q("max(saga_outbox_oldest_age_seconds)", "oldest"),),
            unit="s",
        ),
        Panel(
            "Transaction duration",
            _quantiles("saga_db_transaction_duration_seconds", ""),
            unit="s",
            description="Every PostgreSQL transaction of the coordinators, begin to end.",
        ),
        Panel(
            "Transactions per second by instance",
            (
                _q(
                    f"sum by (instance) (rate(saga_db_transaction_duration_seconds_count[{RATE}]))",
                    "{{instance}}",
                ),
            ),
            unit="ops",
        ),
        Panel(
            "Sagas in the database by status",
            (_q("max by (saga_type, status) (saga_instances)", "{{saga_type}} {{status}}"),),
        ),
        Panel(
            "Overdue sagas",
            (_q("max by (saga_type) (saga_overdue_sagas)", "{{saga_type}}"),),
        ),
    )
    return DashboardSpec(
        "saga-persistence",
        "Saga coordinator / Persistence",
        "PostgreSQL side: the outbox, transactions, and saga rows.",
        (("PostgreSQL", panels),),
    )


SECTIONS = (_overview, _latency, _failures, _messaging, _persistence)


def specs(registry: SagaRegistry) -> list[DashboardSpec]:
    """The dashboards' specifications for the sagas of ``registry``."""
    return [section(registry) for section in SECTIONS]


# -- building with the Grafana Foundation SDK --------------------------------------------------


def _target(query: Query, ref: str) -> prometheus.Dataquery:
    return (
        prometheus.Dataquery()
        .expr(query.expr)
        .legend_format(query.legend or "__auto")
        .ref_id(ref)
        .datasource(DATASOURCE)
    )


def _thresholds(red_above: float | None) -> dashboard.ThresholdsConfig:
    steps = [Threshold(color="green")]
    if red_above is not None:
        steps.append(Threshold(value=red_above, color="red"))
    return dashboard.ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(steps)


def _panel(spec: Panel, panel_id: int) -> timeseries.Panel | stat.Panel:
    built: timeseries.Panel | stat.Panel
    if spec.kind == "stat":
        built = (
            stat.Panel()
            .height(4)
            .graph_mode(BigValueGraphMode.AREA)
            .color_mode(BigValueColorMode.VALUE)
            .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]))
        )
    else:
        built = (
            timeseries.Panel()
            .height(8)
            .fill_opacity(10)
            .legend(
                common.VizLegendOptions()
                .display_mode(LegendDisplayMode.LIST)
                .placement(LegendPlacement.BOTTOM)
                .show_legend(True)
            )
        )
        if spec.stacked:
            built = built.stacking(common.StackingConfig().mode(StackingMode.NORMAL))
    built = (
        built.id(panel_id)
        .title(spec.title)
        .span(spec.width)
        .unit(spec.unit)
        .datasource(DATASOURCE)
        .thresholds(_thresholds(spec.red_above))
    )
    if spec.description:
        built = built.description(spec.description)
    for index, query in enumerate(spec.queries):
        built = built.with_target(_target(query, chr(ord("A") + index)))
    return built


def build_dashboard(spec: DashboardSpec) -> dict[str, Any]:
    """One dashboard's JSON model (a dict, as Grafana provisions it)."""
    builder = (
        dashboard.Dashboard(spec.title)
        .uid(spec.uid)
        .description(spec.description)
        .tags(["saga"])
        .editable()
        .refresh("10s")
        .time("now-1h", "now")
        .timezone("browser")
        .link(
            dashboard.DashboardLink("Saga dashboards")
            .type(DashboardLinkType.DASHBOARDS)
            .tags(["saga"])
            .as_dropdown(True)
            .keep_time(True)
        )
    )
    panel_id = 0
    for title, panels in spec.rows:
        panel_id += 1
        builder = builder.with_row(dashboard.Row(title).id(panel_id))
        for panel in panels:
            panel_id += 1
            builder = builder.with_panel(_panel(panel, panel_id))
    encoded: dict[str, Any] = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
    return encoded


def build_dashboards(registry: SagaRegistry | None = None) -> dict[str, dict[str, Any]]:
    """File name -> dashboard JSON model, for the sagas of ``registry`` (default: all)."""
    registry = registry if registry is not None else default_registry()
    return {f"{spec.uid}.json": build_dashboard(spec) for spec in specs(registry)}


def render_dashboards(registry: SagaRegistry | None = None) -> dict[str, str]:
    """File name -> the exact text committed under ``deploy/grafana/dashboards/``."""
    return {
        name: json.dumps(model, indent=2, sort_keys=True) + "\n"
        for name, model in build_dashboards(registry).items()
    }


def expressions(model: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """``(panel title, PromQL expression)`` of every query of a dashboard's JSON model."""
    for panel in _walk(model.get("panels", [])):
        for target in panel.get("targets", []):
            if "expr" in target:
                yield panel.get("title", ""), target["expr"]


def _walk(panels: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _walk(panel.get("panels", []))


_PROMQL_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or"}
    | {"unless", "offset", "inf", "nan"}
)


def referenced_metrics(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (a small lexer, enough for ours).

    Label matchers, ranges, strings and grouping clauses are dropped; what remains are metric
    names, function and aggregation names (followed by ``(``), keywords and numbers.
    """
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names: set[str] = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", text):
        token = match.group()
        if text[match.end() :].lstrip().startswith("(") or token.lower() in _PROMQL_KEYWORDS:
            continue
        names.add(token)
    return names


def main(argv: Sequence[str] | None = None) -> int:
    """Write the dashboards (or, with ``--check``, report whether they are up to date)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="fail if the files are stale")
    parser.add_argument("--out", type=Path, default=DASHBOARD_DIR)
    args = parser.parse_args(argv)
    rendered = render_dashboards()
    out: Path = args.out
    stale = sorted(
        name
        for name, text in rendered.items()
        if not (out / name).exists() or (out / name).read_text() != text
    )
    extra = sorted(p.name for p in out.glob("*.json") if p.name not in rendered)
    if args.check:
        for name in [*stale, *extra]:
            print(f"stale: {out / name} (run `make dashboards`)", file=sys.stderr)
        return 1 if stale or extra else 0
    out.mkdir(parents=True, exist_ok=True)
    for name, text in rendered.items():
        (out / name).write_text(text)
    for name in extra:
        (out / name).unlink()
    print(f"wrote {len(rendered)} dashboards to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
