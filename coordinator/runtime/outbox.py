"""The outbox relay: publishes committed outbox rows to Kafka, then marks them sent."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime

from aiokafka import AIOKafkaProducer

from coordinator.config import RelaySettings
from coordinator.core.clock import Clock
from coordinator.observability.tracing import record_publishes
from coordinator.store.records import OutboxRecord
from coordinator.store.saga_store import SagaStore
from service_sdk.contract import encode_headers
from service_sdk.retry import RetryLog, RetryPolicy, call_with_retries

__all__ = ["OutboxRelay"]

logger = logging.getLogger(__name__)

# Kafka or the database is unavailable: the rows stay pending, so every failure is retried.
_RELAY_RETRIES = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=5.0)


class OutboxRelay:
    """Publishes outbox rows in id order (so each saga's messages keep their order).

    Woken in-process right after a transaction commits, so the happy path has no polling
    delay; a periodic sweep publishes what a crashed instance left behind. Rows are claimed
    with ``FOR UPDATE SKIP LOCKED`` so concurrent relays never publish the same row at once.
    A crash between publishing and marking sent publishes a row twice: participants
    de-duplicate by command id.
    """

    def __init__(
        self,
        store: SagaStore,
        producer: AIOKafkaProducer,
        settings: RelaySettings,
        clock: Clock,
        *,
        on_published: Callable[[Sequence[OutboxRecord], float, datetime], None] | None = None,
    ) -> None:
        self._store = store
        self._on_published = on_published
        self._producer = producer
        self._settings = settings
        self._clock = clock
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._retry_log = RetryLog(logger, "outbox relay", level=logging.ERROR, exc_info=True)
        self._published = 0

    @property
    def published(self) -> int:
        """Rows published since start."""
        return self._published

    def wake(self) -> None:
        """Ask the relay to publish now (called after a commit that wrote outbox rows)."""
        self._wake.set()

    async def publish_once(self) -> int:
        """Claim, publish and mark sent up to one batch of rows; returns how many."""
        async with self._store.engine.begin() as conn:
            rows = await self._store.claim_outbox(conn, limit=self._settings.batch_size)
            if not rows:
                return 0
            started_ns = time.time_ns()
            sends = [
                await self._producer.send(
                    row.topic, row.value, key=row.key, headers=encode_headers(row.headers)
                )
                for row in rows
            ]
            await asyncio.gather(*sends)
            ended_ns = time.time_ns()
            record_publishes(rows, start_ns=started_ns, end_ns=ended_ns)
            sent_at = self._clock.now()
            await self._store.mark_outbox_sent(conn, [row.id for row in rows], sent_at)
        self._published += len(rows)
        if self._on_published is not None:
            self._on_published(rows, (ended_ns - started_ns) / 1e9, sent_at)
        return len(rows)

    async def drain(self) -> int:
        """Publish until nothing is pending; returns how many rows were published."""
        total = 0
        while True:
            count = await self.publish_once()
            total += count
            if count < self._settings.batch_size:
                return total

    async def run(self) -> None:
        """Publish on every wake-up and sweep periodically, until :meth:`stop`."""
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._settings.sweep_interval_s)
            self._wake.clear()
            try:
                await call_with_retries(
                    self.drain, _RELAY_RETRIES, on_retry=self._retry_log, stop=self._stopping
                )
            except Exception:
                if not self._stopping.is_set():
                    raise  # not reached: every failure is retried until stop
                # Stopping: the last drain below publishes what it can, or fails visibly.
        await self.drain()

    def stop(self) -> None:
        """Ask :meth:`run` to publish what is pending and return."""
        self._stopping.set()
        self._wake.set()
