"""The coordinator process: its components, started and stopped in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection, Mapping, Sequence
from types import TracebackType
from typing import Any

from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.api.app import create_api
from coordinator.api.backend import Readiness
from coordinator.api.server import HttpServer
from coordinator.config import Settings
from coordinator.core.batch import BatchOutcome
from coordinator.core.clock import Clock, SystemClock
from coordinator.core.definition import SagaRegistry
from coordinator.core.schedule import ScheduledSaga, scheduled_sagas
from coordinator.core.state import SagaInstance, SagaStatus, Transition
from coordinator.observability.metrics import CoordinatorMetrics, MetricsSampler
from coordinator.observability.tracing import ensure_traceparent
from coordinator.ops.actions import ActionResult, OperatorActions, SagaTimeline
from coordinator.ops.client import SagaClient
from coordinator.ops.console import ConsoleService
from coordinator.ops.dead_letter_admin import DeadLetterAdmin
from coordinator.ops.schedules import ScheduleAdmin
from coordinator.ops.signals import SentSignal, SignalSender
from coordinator.runtime.admission import Admitter
from coordinator.runtime.consumer import ReplyConsumer
from coordinator.runtime.dead_letters import DeadLetterPublisher
from coordinator.runtime.deadlines import DeadlineScanner
from coordinator.runtime.heartbeats import HeartbeatListener
from coordinator.runtime.housekeeping import Housekeeper
from coordinator.runtime.kafka import ensure_topics, explain_start_failure, producer_kwargs
from coordinator.runtime.outbox import OutboxRelay
from coordinator.runtime.parking import ParkedReplyResumer
from coordinator.runtime.processor import BatchProcessor
from coordinator.runtime.producer import coordinator_producers
from coordinator.runtime.scheduler import Scheduler
from coordinator.runtime.transient import is_transient
from coordinator.store.database import create_engine
from coordinator.store.saga_store import SagaStore
from service_sdk.contract import Topics
from service_sdk.retry import RetryLog, RetryPolicy, call_with_retries

__all__ = ["Coordinator", "CoordinatorBackend"]

logger = logging.getLogger(__name__)

# Waiting for Kafka at start: soon at first, then every few seconds for as long as it takes.
_CONNECT_RETRIES = RetryPolicy(initial_backoff_s=0.5, max_backoff_s=5.0)


class Coordinator:
    """One coordinator instance: a consumer-group member over replies and start requests,
    the outbox relay, the deadline scanner, housekeeping, and the Python client.

    Use ``async with Coordinator(...) as c: await c.serve(stop_event)``. Shutdown stops
    intake, lets the in-flight batch finish and commit, publishes pending outbox rows within
    the grace period, closes Kafka, and disposes the database last.

    ``metrics`` receives what every component does; without one, a private registry holds
    them (serving ``/metrics`` is the CLI's job).
    """

    def __init__(
        self,
        settings: Settings,
        registry: SagaRegistry,
        clock: Clock | None = None,
        *,
        metrics: CoordinatorMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics if metrics is not None else CoordinatorMetrics(CollectorRegistry())
        self.registry = registry
        self.clock: Clock = clock or SystemClock()
        self.topics = Topics(settings.kafka.topic_prefix)
        self._engine: AsyncEngine | None = None
        self._relay_engine: AsyncEngine | None = None
        self._started = False
        self._stopped = False
        self.producers = coordinator_producers(settings.kafka)
        self._topics_ready = False
        self._connected = False
        self._http_task: asyncio.Task[None] | None = None
        self.store: SagaStore
        self.relay: OutboxRelay
        self.processor: BatchProcessor
        self.consumer: ReplyConsumer
        self.client: SagaClient
        self.deadlines: DeadlineScanner
        self.resumer: ParkedReplyResumer
        self.housekeeper: Housekeeper
        self.admitter: Admitter
        self.heartbeats: HeartbeatListener
        self.operator: OperatorActions
        self.signals: SignalSender
        self.http: HttpServer | None = None
        """The HTTP API's server; None when ``settings.http.port`` is None."""
        self.dead_letter_admin: DeadLetterAdmin | None = None
        """The console's dead-letter browser (its replay producer starts on first replay)."""
        self.sampler: MetricsSampler
        self.scheduler: Scheduler
        self.schedule_admin: ScheduleAdmin

    def _after_commit(self, outcome: BatchOutcome) -> None:
        self.metrics.observe_batch(outcome)
        if any(t.instance.is_terminal for _, t in outcome.transitions):
            self.admitter.wake()  # capacity freed up

    def _after_deadlines(self, transitions: list[Transition]) -> None:
        self.metrics.observe_deadlines(transitions)
        if any(t.instance.is_terminal for t in transitions):
            self.admitter.wake()

    def _after_admission(self, transitions: list[Transition]) -> None:
        self.metrics.observe_deadlines(transitions)

    def _after_schedule(self, transitions: list[Transition]) -> None:
        self.metrics.observe_deadlines(transitions)
        self.admitter.wake()  # a start beyond the caps waits QUEUED

    def scheduled(self) -> tuple[ScheduledSaga, ...]:
        """The schedules this coordinator fires: its definitions' and its configuration's.

        Raises:
            ScheduleError: Two share a name, or a configured one names an unknown saga type.
        """
        if not self.settings.schedules.enabled:
            return ()
        return scheduled_sagas(
            ((name, self.registry.get(name)) for name in self.registry.names()),
            [config.scheduled() for config in self.settings.schedules.declared],
        )

    def topic_plan(self) -> list[tuple[str, int]]:
        """The topics this coordinator needs, with their partition counts."""
        k = self.settings.kafka
        topics = self.topics
        plan = [
            (topics.replies, k.reply_partitions),
            (topics.requests, k.reply_partitions),
            (topics.signals, k.reply_partitions),
            (topics.events, k.reply_partitions),
            (topics.heartbeats, 1),
            (Topics.dead_letters(topics.replies), 1),
            (Topics.dead_letters(topics.requests), 1),
            (Topics.dead_letters(topics.signals), 1),
        ]
        for service in self.registry.services():
            plan.append((topics.commands(service), k.command_partitions))
            plan.append((Topics.dead_letters(topics.commands(service)), 1))
        return plan

    async def start(self, stop: asyncio.Event | None = None) -> None:
        """Build the components, serve the HTTP API (not ready yet), then connect to Kafka.

        Kafka being unreachable is waited out (logged once per interval) until it answers or
        ``stop`` is set; PostgreSQL is connected to lazily, and every loop waits it out too.
        """
        if self._started:
            return
        self._started = True
        settings = self.settings
        # No pre-ping: every loop here retries transient database errors (see create_engine).
        self._engine = create_engine(
            settings.database.url, pool_size=settings.database.pool_size, pre_ping=False
        )
        self.store = SagaStore(self._engine, lifecycle_events=settings.events.publish)
        self.metrics.instrument_engine(self._engine)
        self.metrics.prime(
            self.registry,
            dead_letter_topics=(self.topics.replies, self.topics.requests, self.topics.signals),
        )
        # The relay's commits only delete published rows: no WAL flush to wait for (see OutboxRelay).
        self._relay_engine = create_engine(
            settings.database.url, pool_size=1, pre_ping=False, synchronous_commit=False
        )
        self.relay = OutboxRelay(
            self.store,
            self.producers,
            settings.relay,
            self.clock,
            on_published=self.metrics.relay_published,
            engine=self._relay_engine,
        )
        # What the coordinator's own transactions write is published from memory.
        self.store.on_committed = self.relay.hand_over
        self.processor = BatchProcessor(
            self.store,
            self.registry,
            self.topics,
            self.clock,
            admission=settings.admission.limits(),
        )
        self.admitter = Admitter(
            self.store,
            self.registry,
            self.topics,
            self.clock,
            settings.admission,
            on_commit=self._after_admission,
        )
        self.heartbeats = HeartbeatListener(
            self.store,
            self.registry,
            self.topics,
            self.clock,
            settings.kafka,
            on_commit=self._after_deadlines,
        )
        self.client = SagaClient(self.processor)
        self.operator = OperatorActions(
            self.store, self.registry, self.topics, self.clock, on_commit=self.relay.wake
        )
        self.signals = SignalSender(self.store, self.producers, self.topics, source="http-api")
        dead_letters = DeadLetterPublisher(
            self.producers,
            settings.kafka.group_id,
            on_published=lambda letters: self.metrics.dead_letters_published(
                (letter.record.topic, letter.reason) for letter in letters
            ),
        )
        self.consumer = ReplyConsumer(
            self.processor,
            dead_letters,
            settings.kafka,
            self.topics,
            on_commit=self._after_commit,
            hold_starts=lambda: self.admitter.saturated,
        )
        self.deadlines = DeadlineScanner(
            self.store,
            self.registry,
            self.topics,
            self.clock,
            settings.deadlines,
            on_commit=self._after_deadlines,
        )
        self.resumer = ParkedReplyResumer(
            self.store,
            self.registry,
            self.processor,
            interval_s=settings.deadlines.scan_interval_s,
            on_commit=self._after_commit,
            dead_letters=dead_letters,
            topics=self.topics,
        )
        self.housekeeper = Housekeeper(self.store, self.clock, settings.housekeeping)
        self.scheduler = Scheduler(
            self.store,
            self.registry,
            self.topics,
            self.clock,
            settings.schedules,
            self.scheduled(),
            admission=settings.admission.limits(),
            metrics=self.metrics.schedules,
            on_commit=self._after_schedule,
        )
        self.schedule_admin = ScheduleAdmin(self.store, self.clock)
        self.sampler = MetricsSampler(
            self.metrics,
            self.store,
            self.clock,
            settings.metrics,
            self.registry.names(),
            consumer_lag=self.consumer.partition_lag,
            services=sorted(self.registry.services()),
            liveness_window_s=settings.deadlines.liveness_window_s,
            versions=self.registry.keys(),
        )
        if settings.http.port is not None:
            self.http = HttpServer(
                create_api(
                    CoordinatorBackend(self),
                    settings.http,
                    max_message_bytes=settings.kafka.max_message_bytes,
                    console=self._console(),
                    schedules=self.schedule_admin,
                ),
                settings.http,
            )
            self.http.start()  # binds now: a taken port fails the start, not the serve
            # Served already while Kafka may still be unreachable: /ready answers 503 then.
            self._http_task = asyncio.create_task(self.http.run(), name="http-api")
        try:
            await call_with_retries(
                self._connect,
                _CONNECT_RETRIES,
                retry_on=is_transient,
                on_retry=RetryLog(
                    logger, f"connecting to Kafka at {settings.kafka.bootstrap_servers}"
                ),
                stop=stop,
            )
        except Exception:
            if stop is not None and stop.is_set():
                logger.info("stopped before Kafka could be reached")
                return
            raise
        self._connected = True
        logger.info(
            "coordinator started (kafka %s, group %s)",
            settings.kafka.bootstrap_servers,
            settings.kafka.group_id,
        )

    def _console(self) -> ConsoleService:
        """The web console's reads and actions over this instance's store and Kafka."""
        settings = self.settings
        self.dead_letter_admin = DeadLetterAdmin(
            settings.kafka.bootstrap_servers,
            self.store,
            self.topics,
            producer_kwargs={**producer_kwargs(settings.kafka), "client_id": "saga-console"},
            clock=self.clock,
            read_timeout_s=10.0,
        )
        return ConsoleService(
            self.store,
            self.registry,
            self.operator,
            self.dead_letter_admin,
            retention_s=settings.housekeeping.saga_retention_s,
        )

    async def _connect(self) -> None:
        """Topics, the producer, the consumer groups: each step done once, kept on a retry."""
        settings = self.settings
        if settings.kafka.create_topics and not self._topics_ready:
            await ensure_topics(settings.kafka.bootstrap_servers, self.topic_plan())
            self._topics_ready = True
        try:
            await self.producers.current()
        except KafkaError as exc:
            failure = explain_start_failure(settings.kafka, exc)
            if failure is exc:
                raise
            raise failure from exc
        await self.consumer.start()
        await self.heartbeats.start()

    async def serve(self, stop: asyncio.Event) -> None:
        """Run every component until ``stop`` is set or one of them fails, then drain."""
        if not self._started:
            await self.start(stop)
        if not self._connected:
            return  # stopped while still waiting for Kafka
        async with asyncio.TaskGroup() as group:
            consumer_task = group.create_task(self.consumer.run(), name="reply-consumer")
            relay_task = group.create_task(self.relay.run(), name="outbox-relay")
            deadline_task = group.create_task(self.deadlines.run(), name="deadline-scanner")
            resumer_task = group.create_task(self.resumer.run(), name="parked-replies")
            sampler_task = group.create_task(self.sampler.run(), name="metrics-sampler")
            housekeeping_task = group.create_task(self.housekeeper.run(), name="housekeeping")
            admission_task = group.create_task(self.admitter.run(), name="admission")
            heartbeat_task = group.create_task(self.heartbeats.run(), name="heartbeats")
            scheduler_task = group.create_task(self.scheduler.run(), name="scheduler")
            http = self.http
            running_http = self._http_task
            # The group watches the server started in start(): its failure stops all.
            http_task = group.create_task(_await(running_http)) if running_http else None
            await stop.wait()
            logger.info("coordinator draining")
            # Read-only and possibly waiting on a partition's position: no need to finish.
            sampler_task.cancel()
            # Deletes are idempotent and bounded: an interrupted sweep resumes next time.
            self.housekeeper.stop()
            housekeeping_task.cancel()
            try:
                async with asyncio.timeout(self.settings.shutdown_grace_s):
                    if http is not None and http_task is not None:
                        # First: no new sagas or actions while the rest drains.
                        http.stop()
                        await http_task
                    await self.consumer.stop()
                    # No new starts from schedules either; a round in progress commits.
                    self.scheduler.stop()
                    await scheduler_task
                    self.admitter.stop()
                    self.heartbeats.stop()
                    await heartbeat_task
                    self.deadlines.stop()
                    self.resumer.stop()
                    self.relay.stop()
                    await relay_task
            except TimeoutError:
                # Whatever is unfinished is safe to abandon: uncommitted batches are
                # redelivered, pending outbox rows are swept by the next instance.
                logger.warning("grace period over; abandoning what is still in flight")
                for task in (
                    consumer_task,
                    relay_task,
                    deadline_task,
                    resumer_task,
                    admission_task,
                    heartbeat_task,
                    scheduler_task,
                    http_task,
                ):
                    if task is not None:
                        task.cancel()

    async def stop(self) -> None:
        """Release Kafka and the database. Idempotent."""
        if self._stopped or not self._started:
            return
        self._stopped = True
        if self.http is not None:
            self.http.stop()
            if self._http_task is not None and not self._http_task.done():
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    async with asyncio.timeout(self.settings.shutdown_grace_s):
                        await self._http_task
            self.http.close()
        with contextlib.suppress(Exception):
            await self.consumer.stop()
        await self.heartbeats.close()
        await self.producers.stop()
        if self.dead_letter_admin is not None:
            await self.dead_letter_admin.stop()
        if self._relay_engine is not None:
            await self._relay_engine.dispose()
        if self._engine is not None:
            await self._engine.dispose()
        logger.info("coordinator stopped")

    async def __aenter__(self) -> Coordinator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


async def _await(task: asyncio.Task[None]) -> None:
    """Wait for a task started elsewhere, so a TaskGroup sees how it ends."""
    await task


class CoordinatorBackend:
    """A :class:`~coordinator.api.backend.SagaBackend` over a started :class:`Coordinator`."""

    def __init__(self, coordinator: Coordinator, *, db_timeout_s: float = 2.0) -> None:
        self._coordinator = coordinator
        self._db_timeout_s = db_timeout_s

    def saga_types(self) -> Collection[str]:
        return self._coordinator.registry.names()

    async def start_saga(
        self,
        saga_type: str,
        data: Mapping[str, Any],
        *,
        saga_id: str | None,
        traceparent: str | None,
    ) -> str:
        return await self._coordinator.client.start(
            saga_type, data, saga_id=saga_id, traceparent=ensure_traceparent(traceparent)
        )

    async def show(self, saga_id: str) -> SagaTimeline:
        return await self._coordinator.operator.show(saga_id)

    async def list_sagas(
        self,
        *,
        status: SagaStatus | None,
        saga_type: str | None,
        limit: int,
        offset: int,
        business_key: str | None = None,
    ) -> Sequence[SagaInstance]:
        return await self._coordinator.operator.list(
            status, saga_type, limit, offset, business_key=business_key
        )

    async def retry(self, saga_id: str, *, actor: str, reason: str, dry_run: bool) -> ActionResult:
        return await self._coordinator.operator.retry(
            saga_id, actor=actor, reason=reason, dry_run=dry_run
        )

    async def abort(self, saga_id: str, *, actor: str, reason: str, dry_run: bool) -> ActionResult:
        return await self._coordinator.operator.abort(
            saga_id, actor=actor, reason=reason, dry_run=dry_run
        )

    async def send_signal(
        self,
        saga_id: str,
        name: str,
        payload: Mapping[str, Any],
        *,
        message_id: str | None,
        traceparent: str | None,
    ) -> SentSignal:
        return await self._coordinator.signals.send(
            saga_id, name, payload, message_id=message_id, traceparent=traceparent
        )

    async def readiness(self) -> Readiness:
        details: dict[str, str] = {}
        database = False
        try:
            async with (
                asyncio.timeout(self._db_timeout_s),
                self._coordinator.store.engine.connect() as conn,
            ):
                await conn.execute(text("SELECT 1"))
            database = True
        except Exception as exc:
            details["database"] = f"{type(exc).__name__}: {exc}"[:300]
        consumer = self._coordinator.consumer
        running = consumer.running
        if not running:
            details["consumer"] = "not started or stopping"
        return Readiness(
            checks={"database": database, "consumer": running},
            partitions=len(consumer.assignment()) if running else None,
            details=details,
        )
