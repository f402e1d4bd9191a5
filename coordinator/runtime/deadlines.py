"""The deadline scanner: turns overdue replies into events for the engine."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Collection, Sequence
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.config import DeadlineSettings
from coordinator.core.clock import Clock
from coordinator.core.definition import SagaRegistry
from coordinator.core.machine import apply_all
from coordinator.core.state import DeadlineFired, SagaInstance, Transition
from coordinator.observability.logs import log_transitions
from coordinator.observability.tracing import record_transitions
from coordinator.store.heartbeats import HeartbeatStore
from coordinator.store.persist import persist
from coordinator.store.saga_store import SagaStore
from service_sdk.contract import Topics
from service_sdk.retry import RetryLog, RetryPolicy, call_with_retries

__all__ = ["DeadlineScanner"]

logger = logging.getLogger(__name__)


class DeadlineScanner:
    """Claims sagas whose awaited reply is overdue and applies :class:`DeadlineFired`, one per
    overdue command (a saga awaits several inside a parallel group). A timer's fire time and a
    signal wait's timeout are deadlines too.

    Deadlines live in PostgreSQL (``saga_instance.deadline_at``), so they survive restarts;
    rows are claimed with ``FOR UPDATE SKIP LOCKED`` so several coordinator instances never
    fire the same deadline twice. The engine decides: postpone (the command waits, not picked
    up, at a service that is alive), re-send (same command id, next attempt), or give up on
    the step and compensate. A service is alive when one of its instances sent a heartbeat
    within ``settings.liveness_window_s``.
    """

    def __init__(
        self,
        store: SagaStore,
        registry: SagaRegistry,
        topics: Topics,
        clock: Clock,
        settings: DeadlineSettings,
        *,
        on_commit: Callable[[list[Transition]], None] | None = None,
        random_unit: Callable[[], float] = random.random,
    ) -> None:
        self._store = store
        self._registry = registry
        self._topics = topics
        self._clock = clock
        self._settings = settings
        self._on_commit = on_commit
        self._random_unit = random_unit
        self._heartbeats = HeartbeatStore()
        self._stopping = asyncio.Event()
        # A failed scan is tried again at the next interval, for as long as it takes: due
        # deadlines stay in the table until a scan succeeds.
        self._retries = RetryPolicy(
            initial_backoff_s=settings.scan_interval_s,
            max_backoff_s=settings.scan_interval_s,
            multiplier=1.0,
        )
        self._retry_log = RetryLog(logger, "deadline scan", level=logging.ERROR, exc_info=True)
        self.fired = 0

    async def scan_once(self) -> int:
        """Fire up to one batch of due deadlines; returns how many fired."""
        now = self._clock.now()
        started_ns = time.time_ns()
        transitions: list[Transition] = []
        befores: list[SagaInstance] = []
        async with self._store.transaction() as conn:
            due = await self._store.claim_due_deadlines(
                conn, now, self._settings.batch_size, versions=self._registry.keys()
            )
            alive, unsent = await self._waiting_facts(conn, due, now)
            for instance in due:
                overdue = [
                    entry
                    for entry in instance.awaiting
                    if entry.deadline_at is not None and entry.deadline_at <= now
                ]
                if not overdue:
                    continue
                if not self._registry.has(instance.saga_type, instance.definition_version):
                    logger.error(
                        "saga %s has type %s version %d, not loaded here; its deadline cannot fire",
                        instance.saga_id,
                        instance.saga_type,
                        instance.definition_version,
                        extra={"saga_id": instance.saga_id},
                    )
                    continue
                # One event per overdue command (several inside a parallel group), applied in
                # turn as one transition. Timers, waits and child sagas involve no participant:
                # nothing to postpone for them (their service is None).
                events = [
                    DeadlineFired(
                        entry.step,
                        entry.command_id,
                        entry.attempt,
                        self._random_unit(),
                        participant_alive=entry.service is not None and entry.service in alive,
                        command_unsent=entry.service is not None and instance.saga_id in unsent,
                    )
                    for entry in overdue
                ]
                # The version the saga started with, never the newest.
                definition = self._registry.get(instance.saga_type, instance.definition_version)
                transitions.append(apply_all(definition, instance, events, now))
                befores.append(instance)
            if transitions:
                await persist(
                    self._store,
                    conn,
                    self._topics,
                    [t.instance for t in transitions if t.changed],
                    transitions,
                    now,
                    registry=self._registry,
                )
        self.fired += len(transitions)
        fired = list(zip(befores, transitions, strict=True))
        log_transitions(logger, fired, level=logging.INFO, cause="missed its deadline")
        record_transitions(
            fired,
            start_ns=started_ns,
            end_ns=time.time_ns(),
            batch_size=len(due),
            name="saga.deadline",
        )
        if transitions and self._on_commit is not None:
            self._on_commit(transitions)
        return len(due)

    async def _waiting_facts(
        self, conn: AsyncConnection, due: Sequence[SagaInstance], now: datetime
    ) -> tuple[Collection[str], set[str]]:
        """The services alive now, and the due sagas whose awaited command is still unsent.

        When no service at all was heard from within the window but some were before, the
        silence is most likely this coordinator's own (Kafka unreachable, heartbeats not
        read): every service counts as alive then, and nothing is counted against them.
        """
        if not due:
            return set(), set()
        since = now - timedelta(seconds=self._settings.liveness_window_s)
        alive: Collection[str] = await self._heartbeats.select_live_services(conn, since)
        if not alive and await self._heartbeats.any_heard_from(conn):
            alive = self._registry.services()
        unsent = await self._store.select_sagas_with_unsent_outbox(
            conn, [instance.saga_id for instance in due]
        )
        return alive, unsent

    async def run(self) -> None:
        """Scan every ``scan_interval_s`` (at once again after a full batch) until stopped."""
        while not self._stopping.is_set():
            try:
                claimed = await call_with_retries(
                    self.scan_once, self._retries, on_retry=self._retry_log, stop=self._stopping
                )
            except Exception:
                if not self._stopping.is_set():
                    raise  # not reached: every failure is retried until stop
                return
            if claimed < self._settings.batch_size:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self._settings.scan_interval_s)

    def stop(self) -> None:
        """Ask :meth:`run` to return after the current scan."""
        self._stopping.set()
