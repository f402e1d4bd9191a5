"""The outbox relay: publishes committed outbox rows to Kafka, deleting them as it goes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime

from aiokafka.errors import (
    InvalidTopicError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coordinator.config import RelaySettings
from coordinator.core.clock import Clock
from coordinator.core.state import HistoryEntry, HistoryKind
from coordinator.observability.tracing import record_publishes
from coordinator.runtime.producer import ProducerHandle
from coordinator.store.records import OutboxRecord
from coordinator.store.saga_store import SagaStore
from service_sdk.contract import Header, encode_headers
from service_sdk.dead_letters import DeadLetterRecord
from service_sdk.retry import RetryLog, RetryPolicy, call_with_retries

__all__ = ["OutboxRelay"]

logger = logging.getLogger(__name__)

# Kafka or the database is unavailable: the rows stay pending, so every failure is retried.
_RELAY_RETRIES = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=5.0)


UNSENDABLE_REASON = "unsendable"
"""The dead-letter reason of an outbox row Kafka refuses for good (too large, bad topic)."""

_NEVER_SENDABLE = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    RecordListTooLargeError,
    InvalidTopicError,
)


def _unsendable(error: BaseException) -> bool:
    return isinstance(error, _NEVER_SENDABLE)


class _OutboxAsRecord:
    """An outbox row seen as the record a dead letter is made of (its offset: the row id)."""

    def __init__(self, row: OutboxRecord) -> None:
        self.topic = row.topic
        self.partition = -1
        self.offset = row.id
        self.timestamp = int(row.created_at.timestamp() * 1000)
        self.key = row.key
        self.value = row.value
        self.headers = encode_headers(row.headers)


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
        producers: ProducerHandle,
        settings: RelaySettings,
        clock: Clock,
        *,
        on_published: Callable[[Sequence[OutboxRecord], float, datetime], None] | None = None,
        engine: AsyncEngine | None = None,
    ) -> None:
        """
        Args:
            engine: The relay's own pool (the store's when None). Its commits only mark rows
                sent, so the coordinator gives it one with ``synchronous_commit`` off: a mark
                lost in a database crash publishes the row again, which receivers
                de-duplicate, and the relay never waits for a WAL flush.
        """
        self._store = store
        self._engine = engine if engine is not None else store.engine
        self._on_published = on_published
        self._producers = producers
        self.set_aside = 0
        """Rows dead-lettered because Kafka could never take them."""
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
        """Take, publish and delete up to one batch of rows; returns how many were taken.

        Rows Kafka can never take (too large, invalid topic) are dead-lettered, recorded in
        their saga's history and deleted like sent ones, so they never hold back the rows
        behind them. If other sends failed, the rows that did go out stay deleted, the
        others are put back, and the first failure is raised for the retry loop; a producer
        whose idempotence state the broker lost is renewed first.

        Raises:
            Exception: Publishing or the database failed; unsent rows stay pending.
        """
        async with self._engine.begin() as conn:
            # Taken (deleted) in one statement; what cannot be published is put back
            # before the commit.
            rows = await self._store.take_outbox(conn, limit=self._settings.batch_size)
            if not rows:
                return 0
            started_ns = time.time_ns()
            outcomes = await self._send(rows)
            ended_ns = time.time_ns()
            sent = [row for row, error in zip(rows, outcomes, strict=True) if error is None]
            unsendable = [
                (row, error)
                for row, error in zip(rows, outcomes, strict=True)
                if error is not None and _unsendable(error)
            ]
            failed = [error for error in outcomes if error is not None and not _unsendable(error)]
            if unsendable:
                await self._set_aside(conn, unsendable)
            record_publishes(sent, start_ns=started_ns, end_ns=ended_ns)
            sent_at = self._clock.now()
            await self._store.restore_outbox(
                conn,
                [
                    row
                    for row, error in zip(rows, outcomes, strict=True)
                    if error is not None and not _unsendable(error)
                ],
            )
        self._published += len(sent)
        if sent and self._on_published is not None:
            self._on_published(sent, (ended_ns - started_ns) / 1e9, sent_at)
        if failed:
            raise failed[0]  # a producer that lost its state is renewed by the next send
        return len(rows)

    async def _send(self, rows: Sequence[OutboxRecord]) -> list[Exception | None]:
        """Send every row (in id order) and wait for the acks; each row's error or None."""
        # A record refused before it left (e.g. larger than the limit) comes back as a failed
        # future, like one the broker refused.
        pending = [
            await self._producers.send(
                row.topic, value=row.value, key=row.key, headers=encode_headers(row.headers)
            )
            for row in rows
        ]
        outcomes: list[Exception | None] = []
        for delivery in pending:
            try:
                await delivery
                outcomes.append(None)
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    async def _set_aside(
        self, conn: AsyncConnection, unsendable: Sequence[tuple[OutboxRecord, Exception]]
    ) -> None:
        """Dead-letter rows Kafka will never take and say so in their sagas' histories."""
        sends = []
        for row, error in unsendable:
            logger.error(
                "outbox row %d to %s can never be sent (%s: %s); dead-lettering it",
                row.id,
                row.topic,
                type(error).__name__,
                error,
                extra={"saga_id": row.saga_id, "message_id": row.message_id},
            )
            dead = DeadLetterRecord.from_consumer_record(
                _OutboxAsRecord(row), group=None, exc=error, reason=UNSENDABLE_REASON
            )
            sends.append(
                await self._producers.send(
                    dead.topic, value=dead.value, key=dead.key, headers=dead.headers
                )
            )
        await asyncio.gather(*sends)
        await self._store.insert_history(
            conn,
            [
                (
                    row.saga_id,
                    HistoryEntry(
                        HistoryKind.COMMAND_UNSENDABLE,
                        row.headers.get(Header.STEP),
                        row.message_id,
                        {
                            "topic": row.topic,
                            "bytes": len(row.value),
                            "error": f"{type(error).__name__}: {error}"[:500],
                            "command_id": row.headers.get(Header.COMMAND_ID),
                        },
                    ),
                )
                for row, error in unsendable
            ],
            self._clock.now(),
        )
        self.set_aside += len(unsendable)

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
