"""The coordinator's Prometheus metrics, derived from what the runtime already reports.

Saga and step metrics come from the transitions the reply consumer and the deadline scanner
hand to their ``on_commit`` hooks (history kinds, lifecycle events, the instance's
``created_at`` / ``updated_at``), so the engine stays pure and nothing is counted for a
transaction that rolled back. Gauges that describe the database (sagas by status, the outbox,
overdue sagas) and the consumer lag are sampled by :class:`MetricsSampler`. Every metric lives
in one :class:`CoordinatorMetrics` built on a given ``CollectorRegistry`` (tests use a fresh
one). Names carry the ``saga_`` prefix and base units; no label holds a saga id.

Exposed:

========================================================= =======================================
``saga_started_total{saga_type}``                          sagas started
``saga_finished_total{saga_type,status}``                  sagas that reached COMPLETED,
                                                           COMPENSATED or FAILED
``saga_duration_seconds{saga_type,status}``                start to that end (histogram)
``saga_step_duration_seconds{saga_type,step,outcome}``     last send of a step's command to the
                                                           reply that decided it (histogram)
``saga_step_failures_total{saga_type,step}``               forward steps that failed for good
``saga_instances{saga_type,status}``                       sagas in the database (sampled)
``saga_overdue_sagas{saga_type}``                          awaiting sagas past deadline + grace
``saga_replies_total{saga_type,outcome}``                  replies applied: success, failure,
                                                           retryable
``saga_signals_total{saga_type,outcome}``                  signals received by a wait, kept for
                                                           a wait ahead, or rejected
``saga_unexpected_replies_total{saga_type,kind}``          duplicate, late or stale replies
``saga_stale_replies_total{saga_type,reason}``             stale replies by why they matched
                                                           nothing (missing_step, other_step, ...)
``saga_unknown_fields_total{message_type,field}``          unknown fields ignored (tolerant
                                                           reader); payload fields as payload.x
``saga_redelivered_messages_total``                        messages the inbox had already seen
``saga_parked_replies_total``                              replies parked: their saga's definition
                                                           version is not loaded here
``saga_parked_sagas{saga_type,definition_version}``        sagas with parked replies (sampled)
``saga_commands_sent_total{saga_type,service,purpose}``    forward, retry, compensation
``saga_deadlines_fired_total{saga_type,step}``             missed deadlines (retry or give up)
``saga_deadlines_postponed_total{saga_type,step}``         deadlines of commands queued at a
                                                           live participant (not missed)
``saga_commands_picked_up_total{saga_type,step}``          pickups reported by heartbeats
``saga_outstanding_commands{service,state}``               sagas awaiting a command: queued
                                                           or picked_up (sampled)
``saga_participant_instances_alive{service}``              instances heard from (sampled)
``saga_dead_letters_total{topic,reason}``                  records sent to ``<topic>.dlq``
``saga_outbox_pending_messages``                           unsent outbox rows (sampled)
``saga_outbox_oldest_age_seconds``                         age of the oldest unsent row
``saga_outbox_delay_seconds``                              commit to publish, per row
``saga_relay_batch_size``                                  rows per relay publish (histogram)
``saga_relay_publish_duration_seconds``                    Kafka send + ack of a relay batch
``saga_consumer_lag_messages{topic,partition}``            highwater - position, owned partitions
``saga_consumer_batch_size``                               records per consumed batch
``saga_db_transaction_duration_seconds``                   every PostgreSQL transaction
``saga_schedule_*``, ``saga_schedules``                    the scheduler's (see
                                                           :mod:`~coordinator.observability.schedule_metrics`)
========================================================= =======================================
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from aiokafka import TopicPartition
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from sqlalchemy import event
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.config import MetricsSettings
from coordinator.core.batch import BatchOutcome
from coordinator.core.clock import Clock
from coordinator.core.definition import SagaDefinition
from coordinator.core.machine import STALE_REASONS
from coordinator.core.state import (
    TERMINAL_STATUSES,
    CommandPurpose,
    HistoryKind,
    LifecycleKind,
    SagaInstance,
    SagaStatus,
    Transition,
)
from coordinator.observability.schedule_metrics import ScheduleMetrics
from coordinator.store.admission import AdmissionStore
from coordinator.store.heartbeats import HeartbeatStore
from coordinator.store.parking import ParkingStore
from coordinator.store.records import OutboxRecord
from coordinator.store.saga_store import SagaStore
from service_sdk.contract import DeadLetterReason, Outcome
from service_sdk.metrics import MetricsServer

__all__ = [
    "DEAD_LETTER_REASONS",
    "SAGA_DURATION_BUCKETS",
    "STEP_DURATION_BUCKETS",
    "CoordinatorMetrics",
    "MetricsSampler",
    "serve_metrics",
]

logger = logging.getLogger(__name__)

SAGA_DURATION_BUCKETS = (
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
)
"""Seconds, up to an hour: a saga waiting out retries and compensations takes minutes."""

STEP_DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)
"""Seconds; a step is one command round trip (default timeout 30 s)."""

_FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
_DELAY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0)

_ENDINGS = {
    LifecycleKind.COMPLETED: SagaStatus.COMPLETED,
    LifecycleKind.COMPENSATED: SagaStatus.COMPENSATED,
    LifecycleKind.FAILED: SagaStatus.FAILED,
}
_UNEXPECTED = {
    HistoryKind.DUPLICATE_REPLY: "duplicate",
    HistoryKind.LATE_REPLY: "late",
    HistoryKind.STALE_REPLY: "stale",
}
_SIGNAL_OUTCOMES = {
    HistoryKind.SIGNAL_RECEIVED: "received",
    HistoryKind.SIGNAL_KEPT: "kept",
    HistoryKind.SIGNAL_REJECTED: "rejected",
}
_MAX_UNKNOWN_SERIES = 200
"""Distinct (message type, field) series of ``saga_unknown_fields_total``; more count as other."""
_STEP_DECIDED = {HistoryKind.STEP_SUCCEEDED: "success", HistoryKind.STEP_FAILED: "failure"}
_TX_STARTED = "saga_metrics_tx_started"
DEAD_LETTER_REASONS = (
    DeadLetterReason.MALFORMED,
    DeadLetterReason.SCHEMA,
    DeadLetterReason.UNEXPECTED_KIND,
    DeadLetterReason.UNKNOWN_SAGA_TYPE,
    DeadLetterReason.UNKNOWN_SAGA,
    DeadLetterReason.INVALID_DATA,
    DeadLetterReason.CONFLICTING_START,
    DeadLetterReason.PROCESSING_ERROR,
    DeadLetterReason.SIGNAL_NOT_AWAITED,
    DeadLetterReason.SIGNAL_INVALID,
    DeadLetterReason.SAGA_TERMINAL,
)
"""The reasons the reply consumer dead-letters with."""


def _seconds(later: datetime, earlier: datetime) -> float:
    return max((later - earlier).total_seconds(), 0.0)


class CoordinatorMetrics:
    """Every metric of a coordinator process, registered on ``registry``.

    The ``observe_*`` and hook methods never raise: a metrics bug must not stop the consumer
    between a commit and its offsets.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.schedules = ScheduleMetrics(registry)

        def counter(name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        def gauge(name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
            return Gauge(name, doc, labels, registry=registry)

        def histogram(
            name: str, doc: str, buckets: Sequence[float], labels: Sequence[str] = ()
        ) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=registry)

        self.started = counter("saga_started_total", "Sagas started.", ["saga_type"])
        self.finished = counter(
            "saga_finished_total",
            "Sagas that reached a terminal status (COMPLETED, COMPENSATED, FAILED).",
            ["saga_type", "status"],
        )
        self.saga_duration = histogram(
            "saga_duration_seconds",
            "Time from a saga's start to its terminal status.",
            SAGA_DURATION_BUCKETS,
            ["saga_type", "status"],
        )
        self.step_duration = histogram(
            "saga_step_duration_seconds",
            "Time from the last send of a step's command to the reply that decided the step.",
            STEP_DURATION_BUCKETS,
            ["saga_type", "step", "outcome"],
        )
        self.step_failures = counter(
            "saga_step_failures_total",
            "Forward steps that failed for good (the saga compensates).",
            ["saga_type", "step"],
        )
        self.instances = gauge(
            "saga_instances",
            "Sagas in the database by type and status (sampled).",
            ["saga_type", "status"],
        )
        self.overdue = gauge(
            "saga_overdue_sagas",
            "Sagas awaiting a reply whose deadline passed longer ago than the grace period.",
            ["saga_type"],
        )
        self.replies = counter(
            "saga_replies_total",
            "Participant replies applied to a saga, by outcome.",
            ["saga_type", "outcome"],
        )
        self.unexpected_replies = counter(
            "saga_unexpected_replies_total",
            "Replies that matched no awaited command: duplicate, late or stale.",
            ["saga_type", "kind"],
        )
        self.signals = counter(
            "saga_signals_total",
            "Signals applied to a saga, by outcome: received (a wait took it), kept (for a "
            "wait ahead), rejected (dead-lettered with the reason).",
            ["saga_type", "outcome"],
        )
        self.stale_replies = counter(
            "saga_stale_replies_total",
            "Replies that matched no command the saga sent or awaits, by reason.",
            ["saga_type", "reason"],
        )
        self.unknown_fields = counter(
            "saga_unknown_fields_total",
            "Fields the contract does not define, ignored (tolerant reader), by message type.",
            ["message_type", "field"],
        )
        self._unknown_labels: set[tuple[str, str]] = set()
        self.redelivered = counter(
            "saga_redelivered_messages_total",
            "Messages the inbox recognised as already processed (Kafka redeliveries).",
        )
        self.commands_sent = counter(
            "saga_commands_sent_total",
            "Commands written to the outbox, by purpose.",
            ["saga_type", "service", "purpose"],
        )
        self.deadlines_fired = counter(
            "saga_deadlines_fired_total",
            "Awaited replies that missed their deadline.",
            ["saga_type", "step"],
        )
        self.deadlines_postponed = counter(
            "saga_deadlines_postponed_total",
            "Deadlines of commands still queued at a live participant: postponed, not missed.",
            ["saga_type", "step"],
        )
        self.commands_picked_up = counter(
            "saga_commands_picked_up_total",
            "Awaited commands a participant reported working on (the timeout runs from then).",
            ["saga_type", "step"],
        )
        self.outstanding = gauge(
            "saga_outstanding_commands",
            "Sagas awaiting a command, by service and whether the participant picked it up "
            "(state=queued|picked_up) (sampled).",
            ["service", "state"],
        )
        self.participants_alive = gauge(
            "saga_participant_instances_alive",
            "Participant instances heard from (heartbeat) within the liveness window (sampled).",
            ["service"],
        )
        self.dead_letters = counter(
            "saga_dead_letters_total",
            "Records sent to the dead-letter topic of their topic, by reason.",
            ["topic", "reason"],
        )
        self.outbox_pending = gauge(
            "saga_outbox_pending_messages", "Outbox rows not yet published (sampled)."
        )
        self.outbox_oldest_age = gauge(
            "saga_outbox_oldest_age_seconds", "Age of the oldest unpublished outbox row (sampled)."
        )
        self.outbox_delay = histogram(
            "saga_outbox_delay_seconds",
            "Time from writing an outbox row to its publication.",
            _DELAY_BUCKETS,
        )
        self.relay_batch_size = histogram(
            "saga_relay_batch_size", "Outbox rows published per relay batch.", _SIZE_BUCKETS
        )
        self.relay_publish_duration = histogram(
            "saga_relay_publish_duration_seconds",
            "Time to send a relay batch to Kafka and get every acknowledgement.",
            _FAST_BUCKETS,
        )
        self.consumer_lag = gauge(
            "saga_consumer_lag_messages",
            "Records behind the log end per partition this instance owns (sampled).",
            ["topic", "partition"],
        )
        self.consumer_batch_size = histogram(
            "saga_consumer_batch_size", "Records per consumed batch.", _SIZE_BUCKETS
        )
        self.db_transaction_duration = histogram(
            "saga_db_transaction_duration_seconds",
            "Duration of PostgreSQL transactions, begin to commit or rollback.",
            _FAST_BUCKETS,
        )
        self.parked_replies = counter(
            "saga_parked_replies_total",
            "Replies parked because their saga's definition version is not loaded here.",
        )
        self.parked_sagas = gauge(
            "saga_parked_sagas",
            "Sagas with replies parked until a coordinator with their version runs (sampled).",
            ["saga_type", "definition_version"],
        )
        self._lag_labels: set[tuple[str, str]] = set()
        self._parked_labels: set[tuple[str, str]] = set()

    # -- setup ---------------------------------------------------------------------------------

    def prime(
        self,
        definitions: Iterable[type[SagaDefinition[Any]]],
        dead_letter_topics: Iterable[str] = (),
    ) -> None:
        """Create at zero the series of every known saga type, and those of dead letters of
        ``dead_letter_topics`` (the topics the consumer reads) for every reason.

        A series that appears only with its first event hides that event from ``increase()``,
        so an alert on it would never fire for the first one.
        """
        for topic in dead_letter_topics:
            for reason in DEAD_LETTER_REASONS:
                self.dead_letters.labels(topic, reason)
        for definition in definitions:
            name = definition.name
            for stale in STALE_REASONS:
                self.stale_replies.labels(name, stale)
            # An empty field: "no unknown field seen yet" (Prometheus drops empty labels).
            self.unknown_fields.labels(f"{name}.start", "")
            for step in definition.command_steps():
                self.unknown_fields.labels(step.command.message_type, "")
            self.started.labels(name)
            self.overdue.labels(name).set(0)
            for status in TERMINAL_STATUSES:
                self.finished.labels(name, status.value)
            for outcome in Outcome:
                self.replies.labels(name, outcome.value)
            for signal_outcome in _SIGNAL_OUTCOMES.values():
                self.signals.labels(name, signal_outcome)
            for kind in _UNEXPECTED.values():
                self.unexpected_replies.labels(name, kind)
            for unit in definition.units():
                self.step_failures.labels(name, unit.name)
                self.deadlines_fired.labels(name, unit.name)
                self.deadlines_postponed.labels(name, unit.name)
                self.commands_picked_up.labels(name, unit.name)
            for step in definition.command_steps():
                self.commands_sent.labels(name, step.service, CommandPurpose.FORWARD.value)
                self.commands_sent.labels(name, step.service, CommandPurpose.RETRY.value)
                if step.compensation is not None:
                    self.commands_sent.labels(name, step.service, CommandPurpose.COMPENSATION.value)

    def instrument_engine(self, engine: AsyncEngine) -> None:
        """Time every transaction of ``engine`` (SQLAlchemy connection events)."""
        sync_engine = engine.sync_engine
        event.listen(sync_engine, "begin", self._on_begin)
        event.listen(sync_engine, "commit", self._on_end)
        event.listen(sync_engine, "rollback", self._on_end)

    def _on_begin(self, conn: Any) -> None:
        conn.info[_TX_STARTED] = time.perf_counter()

    def _on_end(self, conn: Any) -> None:
        # A connection invalidated mid-transaction (e.g. by a cancelled query) raises on
        # ``info``; an exception here would replace the one being handled, cancellation
        # included, so an instrument never raises.
        if conn.invalidated:
            return
        try:
            started = conn.info.pop(_TX_STARTED, None)
        except SQLAlchemyError:
            return
        if started is not None:
            self.db_transaction_duration.observe(time.perf_counter() - started)

    # -- hooks of the runtime ------------------------------------------------------------------

    def observe_batch(self, outcome: BatchOutcome) -> None:
        """The reply consumer committed ``outcome`` (its ``on_commit`` hook)."""
        try:
            if outcome.records:
                self.consumer_batch_size.observe(outcome.records)
            if outcome.duplicates:
                self.redelivered.inc(outcome.duplicates)
            if outcome.parked:
                self.parked_replies.inc(outcome.parked)
            for (message_type, name), count in outcome.unknown_fields.items():
                self._count_unknown(message_type, name, count)
            for before, transition in outcome.transitions:
                self._observe(before, transition, reply=before is not None)
        except Exception:
            logger.exception("metrics: cannot observe a batch")

    def observe_deadlines(self, transitions: Sequence[Transition]) -> None:
        """The deadline scanner committed ``transitions`` (its ``on_commit`` hook)."""
        try:
            for transition in transitions:
                self._observe(None, transition, reply=False)
        except Exception:
            logger.exception("metrics: cannot observe fired deadlines")

    def dead_letters_published(self, letters: Iterable[tuple[str, str]]) -> None:
        """The coordinator's dead letters, as ``(original topic, reason)``, were acknowledged."""
        for topic, reason in letters:
            self.dead_letters.labels(topic, reason).inc()

    def relay_published(
        self, rows: Sequence[OutboxRecord], publish_s: float, sent_at: datetime
    ) -> None:
        """The outbox relay published and marked ``rows`` (Kafka took ``publish_s``)."""
        self.relay_batch_size.observe(len(rows))
        self.relay_publish_duration.observe(publish_s)
        for row in rows:
            self.outbox_delay.observe(_seconds(sent_at, row.created_at))

    def _count_unknown(self, message_type: str, name: str, count: int) -> None:
        """Count an ignored field; names come from outside, so the series are capped."""
        key = (message_type[:100], name[:64])
        if key not in self._unknown_labels and len(self._unknown_labels) >= _MAX_UNKNOWN_SERIES:
            key = (message_type[:100], "other")
        self._unknown_labels.add(key)
        self.unknown_fields.labels(*key).inc(count)

    def _observe(self, before: SagaInstance | None, transition: Transition, *, reply: bool) -> None:
        after = transition.instance
        saga_type = after.saga_type
        reply_outcome: str | None = None
        for entry in transition.history:
            kind = entry.kind
            if reply_outcome is None and reply:
                reply_outcome = entry.detail.get("outcome")
            if kind is HistoryKind.STARTED:
                self.started.labels(saga_type).inc()
            elif kind is HistoryKind.DEADLINE_MISSED and entry.step is not None:
                self.deadlines_fired.labels(saga_type, entry.step).inc()
            elif kind is HistoryKind.DEADLINE_POSTPONED and entry.step is not None:
                self.deadlines_postponed.labels(saga_type, entry.step).inc()
            elif kind is HistoryKind.COMMAND_PICKED_UP and entry.step is not None:
                self.commands_picked_up.labels(saga_type, entry.step).inc()
            elif kind in _SIGNAL_OUTCOMES:
                self.signals.labels(saga_type, _SIGNAL_OUTCOMES[kind]).inc()
            elif kind in _UNEXPECTED and reply:
                self.unexpected_replies.labels(saga_type, _UNEXPECTED[kind]).inc()
                if kind is HistoryKind.STALE_REPLY:
                    reason = str(entry.detail.get("reason", "unknown"))
                    self.stale_replies.labels(saga_type, reason).inc()
            for name in entry.detail.get("ignored_fields", ()):
                self._count_unknown(str(entry.detail.get("message_type", "")), str(name), 1)
            if kind is HistoryKind.STEP_FAILED and entry.step is not None:
                self.step_failures.labels(saga_type, entry.step).inc()
            decided = _STEP_DECIDED.get(kind)
            if (
                decided is not None
                and reply
                and before is not None
                and before.status is SagaStatus.RUNNING
                and any(e.step == entry.step for e in before.awaiting)
            ):
                self.step_duration.labels(saga_type, entry.step, decided).observe(
                    _seconds(after.updated_at, before.updated_at)
                )
        if reply_outcome is not None:
            self.replies.labels(saga_type, reply_outcome).inc()
        for lifecycle in transition.events:
            status = _ENDINGS.get(lifecycle.kind)
            if status is not None:
                self.finished.labels(saga_type, status.value).inc()
                self.saga_duration.labels(saga_type, status.value).observe(
                    _seconds(after.updated_at, after.created_at)
                )
        for command in transition.commands:
            self.commands_sent.labels(saga_type, command.service, command.purpose.value).inc()

    # -- sampled gauges ------------------------------------------------------------------------

    def set_saga_counts(
        self, counts: Mapping[tuple[str, SagaStatus], int], saga_types: Iterable[str]
    ) -> None:
        """Sagas per (type, status); every status of ``saga_types`` is set, absent ones to 0."""
        types = set(saga_types) | {saga_type for saga_type, _ in counts}
        for saga_type in types:
            for status in SagaStatus:
                self.instances.labels(saga_type, status.value).set(
                    counts.get((saga_type, status), 0)
                )

    def set_overdue(self, counts: Mapping[str, int], saga_types: Iterable[str]) -> None:
        """Overdue sagas per type; ``saga_types`` absent from ``counts`` are set to 0."""
        for saga_type in set(saga_types) | set(counts):
            self.overdue.labels(saga_type).set(counts.get(saga_type, 0))

    def set_outstanding(
        self, counts: Mapping[tuple[str, bool], int], services: Iterable[str]
    ) -> None:
        """Sagas awaiting a command per ``(service, picked up)``; absent pairs are set to 0."""
        for service in set(services) | {s for s, _ in counts}:
            for picked, state in ((False, "queued"), (True, "picked_up")):
                self.outstanding.labels(service, state).set(counts.get((service, picked), 0))

    def set_participants_alive(self, alive: Mapping[str, int], services: Iterable[str]) -> None:
        """Live instances per service; services absent from ``alive`` are set to 0."""
        for service in set(services) | set(alive):
            self.participants_alive.labels(service).set(alive.get(service, 0))

    def set_parked(
        self, counts: Mapping[tuple[str, int], int], versions: Iterable[tuple[str, int]] = ()
    ) -> None:
        """Parked sagas per (type, version); the ``versions`` loaded here and those parked
        before but no longer are set to 0 (the alert needs a series to evaluate)."""
        current = {(t, str(v)): n for (t, v), n in counts.items()}
        for saga_type, version in versions:
            current.setdefault((saga_type, str(version)), 0)
        for labels in self._parked_labels - current.keys():
            self.parked_sagas.labels(*labels).set(0)
        for labels, value in current.items():
            self.parked_sagas.labels(*labels).set(value)
        self._parked_labels |= set(current)

    def set_outbox(self, pending: int, oldest_age_s: float) -> None:
        """Unsent outbox rows and the age of the oldest."""
        self.outbox_pending.set(pending)
        self.outbox_oldest_age.set(oldest_age_s)

    def set_consumer_lag(self, lag: Mapping[TopicPartition, int]) -> None:
        """The lag of the partitions owned now; series of partitions gone are removed."""
        current = {(tp.topic, str(tp.partition)): value for tp, value in lag.items()}
        for labels in self._lag_labels - current.keys():
            with contextlib.suppress(KeyError):
                self.consumer_lag.remove(*labels)
        for labels, value in current.items():
            self.consumer_lag.labels(*labels).set(value)
        self._lag_labels = set(current)


class MetricsSampler:
    """Samples the gauges that describe the database and the consumer, periodically.

    Every coordinator instance samples the same database, so dashboards aggregate those
    gauges with ``max``, not ``sum``.
    """

    def __init__(
        self,
        metrics: CoordinatorMetrics,
        store: SagaStore,
        clock: Clock,
        settings: MetricsSettings,
        saga_types: Sequence[str],
        consumer_lag: Callable[[], Awaitable[Mapping[TopicPartition, int]]] | None = None,
        *,
        services: Sequence[str] = (),
        liveness_window_s: float = 10.0,
        versions: Sequence[tuple[str, int]] = (),
    ) -> None:
        self._metrics = metrics
        self._versions = tuple(versions)
        self._services = tuple(services)
        self._liveness_window = timedelta(seconds=liveness_window_s)
        self._admission = AdmissionStore()
        self._heartbeats = HeartbeatStore()
        self._parking = ParkingStore()
        self._store = store
        self._clock = clock
        self._settings = settings
        self._saga_types = tuple(saga_types)
        self._consumer_lag = consumer_lag
        self._stopping = asyncio.Event()

    async def sample_once(self) -> None:
        """Read the database and the consumer once and set the gauges."""
        now = self._clock.now()
        grace = timedelta(seconds=self._settings.overdue_grace_s)
        async with self._store.engine.connect() as conn:
            counts = await self._store.count_sagas_by_status(conn)
            pending, oldest_age = await self._store.select_outbox_stats(conn, now)
            overdue = await self._store.count_overdue(conn, now, grace)
            outstanding = await self._admission.count_outstanding(conn)
            alive = await self._heartbeats.count_live_instances(conn, now - self._liveness_window)
            parked = await self._parking.count_parked_sagas(conn)
        self._metrics.set_parked(parked, self._versions)
        self._metrics.set_saga_counts(counts, self._saga_types)
        self._metrics.set_outstanding(outstanding, self._services)
        self._metrics.set_participants_alive(alive, self._services)
        self._metrics.set_outbox(pending, oldest_age)
        self._metrics.set_overdue(overdue, self._saga_types)
        if self._consumer_lag is not None:
            self._metrics.set_consumer_lag(await self._consumer_lag())

    async def run(self) -> None:
        """Sample every ``refresh_interval_s`` until :meth:`stop`; failures are logged."""
        while not self._stopping.is_set():
            try:
                await self.sample_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("metrics sampling failed; trying again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._settings.refresh_interval_s)

    def stop(self) -> None:
        """Ask :meth:`run` to return."""
        self._stopping.set()


@contextlib.asynccontextmanager
async def serve_metrics(
    registry: CollectorRegistry, settings: MetricsSettings
) -> AsyncIterator[MetricsServer | None]:
    """Serve ``registry`` at ``/metrics`` as ``settings`` say; nothing when the port is None.

    Raises:
        OSError: The port cannot be bound.
    """
    if settings.port is None:
        yield None
        return
    # Process-wide: the ``*_created`` series double the series count and nothing reads them.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    async with MetricsServer(registry, host=settings.host, port=settings.port) as server:
        yield server
