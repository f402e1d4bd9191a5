"""The heartbeat listener: which participants are alive, and which commands they picked up.

Participants publish :class:`~service_sdk.contract.Heartbeat` records to ``saga.heartbeats``.
Each coordinator group reads them once (their own consumer group): every record marks its
instance alive (``participant_heartbeat``, stamped with this coordinator's clock) and every
command it lists as picked up becomes a :class:`CommandPickedUp` for the engine, which starts
the step's timeout from then. A record that is not a heartbeat is logged and skipped: these
are telemetry, not business data, and the next heartbeat repeats the facts.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import CommitFailedError, IllegalStateError
from pydantic import ValidationError

from coordinator.config import KafkaSettings
from coordinator.core.clock import Clock
from coordinator.core.definition import SagaRegistry
from coordinator.core.machine import apply
from coordinator.core.state import CommandPickedUp, Transition
from coordinator.store.heartbeats import HeartbeatStore
from coordinator.store.persist import persist
from coordinator.store.saga_store import SagaStore
from service_sdk.contract import Heartbeat, Topics
from service_sdk.retry import RetryLog, RetryPolicy, call_with_retries

__all__ = ["HeartbeatListener"]

logger = logging.getLogger(__name__)


class HeartbeatListener:
    """Consumes ``saga.heartbeats``: liveness rows and pickups, one transaction per batch."""

    def __init__(
        self,
        store: SagaStore,
        registry: SagaRegistry,
        topics: Topics,
        clock: Clock,
        settings: KafkaSettings,
        *,
        on_commit: Callable[[list[Transition]], None] | None = None,
    ) -> None:
        self._store = store
        self._registry = registry
        self._topics = topics
        self._clock = clock
        self._settings = settings
        self._on_commit = on_commit
        self._heartbeats = HeartbeatStore()
        self._consumer: AIOKafkaConsumer | None = None
        self._stopping = asyncio.Event()
        self._retries = RetryPolicy(initial_backoff_s=0.2, max_backoff_s=5.0)
        self._retry_log = RetryLog(logger, "heartbeat batch", level=logging.WARNING)
        self.received = 0
        self.malformed = 0

    async def start(self) -> None:
        """Join the heartbeat group (its own, so every coordinator group reads each once)."""
        if self._consumer is not None:
            return
        consumer = AIOKafkaConsumer(
            self._topics.heartbeats,
            bootstrap_servers=self._settings.bootstrap_servers,
            client_id=self._settings.client_id,
            group_id=f"{self._settings.group_id}.heartbeats",
            enable_auto_commit=False,
            # Heartbeats older than the liveness window say nothing: a new group starts now.
            auto_offset_reset="latest",
            session_timeout_ms=self._settings.session_timeout_ms,
            heartbeat_interval_ms=self._settings.heartbeat_interval_ms,
            max_poll_records=self._settings.max_batch,
        )
        try:
            await consumer.start()
        except BaseException:
            await consumer.stop()  # a failed start still holds connections and tasks
            raise
        self._consumer = consumer

    def _decode(self, records: Sequence[Any]) -> list[Heartbeat]:
        beats: list[Heartbeat] = []
        for record in records:
            try:
                beats.append(Heartbeat.model_validate_json(record.value or b""))
            except ValidationError as exc:
                self.malformed += 1
                logger.warning(
                    "skipping a record of %s[%d]@%d that is not a heartbeat: %s",
                    record.topic,
                    record.partition,
                    record.offset,
                    exc.errors()[0].get("msg"),
                )
        return beats

    async def apply(self, beats: Sequence[Heartbeat]) -> list[Transition]:
        """Record ``beats`` in one transaction; returns the pickups that changed a saga."""
        if not beats:
            return []
        now = self._clock.now()
        reported = {
            (p.saga_id, p.step, p.command_id): p for beat in beats for p in beat.in_progress
        }
        transitions: list[Transition] = []
        async with self._store.transaction() as conn:
            await self._heartbeats.upsert(conn, [(b.service, b.instance) for b in beats], now)
            saga_ids = {saga_id for saga_id, _, _ in reported}
            current = await self._store.select_sagas_for_update(conn, saga_ids) if saga_ids else {}
            for (saga_id, step, command_id), picked in sorted(reported.items()):
                instance = current.get(saga_id)
                if instance is None or not self._registry.has(
                    instance.saga_type, instance.definition_version
                ):
                    continue  # the saga's version is not loaded here: the pickup is not ours
                event = CommandPickedUp(step, command_id, picked.attempt, now)
                definition = self._registry.get(instance.saga_type, instance.definition_version)
                transition = apply(definition, instance, event, now)
                if transition.changed:
                    current[saga_id] = transition.instance
                    transitions.append(transition)
            if transitions:
                await persist(
                    self._store,
                    conn,
                    self._topics,
                    # One row per saga: a saga in a parallel group may have several pickups.
                    list(
                        {
                            t.instance.saga_id: current[t.instance.saga_id] for t in transitions
                        }.values()
                    ),
                    transitions,
                    now,
                    registry=self._registry,
                )
        self.received += len(beats)
        return transitions

    async def run(self) -> None:
        """Read heartbeats until stopped; offsets are committed after each transaction."""
        consumer = self._consumer
        assert consumer is not None, "start() first"
        while not self._stopping.is_set():
            batch = await consumer.getmany(timeout_ms=self._settings.poll_timeout_ms)
            records = [r for rs in batch.values() for r in rs]
            if not records:
                continue
            beats = self._decode(records)
            try:
                transitions = await call_with_retries(
                    functools.partial(self.apply, beats),
                    self._retries,
                    on_retry=self._retry_log,
                    stop=self._stopping,
                )
            except Exception:
                if self._stopping.is_set():
                    return  # uncommitted: the next owner reads these heartbeats again
                raise
            try:
                await consumer.commit()
            except (CommitFailedError, IllegalStateError) as exc:
                # The group rebalanced meanwhile: the new owner reads these again, which only
                # repeats liveness and pickups (both idempotent).
                logger.info("heartbeat offsets not committed after a rebalance: %s", exc)
            if transitions and self._on_commit is not None:
                self._on_commit(transitions)

    def stop(self) -> None:
        """Ask :meth:`run` to return after the current batch (within one poll timeout)."""
        self._stopping.set()

    async def close(self) -> None:
        """Leave the group. Idempotent; after :meth:`run` returned."""
        self._stopping.set()
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            with contextlib.suppress(Exception):
                await consumer.stop()
