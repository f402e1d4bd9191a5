"""The outbox relay: publishes committed outbox rows to Kafka, deleting them as it goes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class _Sent:
    """Rows Kafka acknowledged, and when their sends started and ended."""

    rows: list[OutboxRecord]
    start_ns: int
    end_ns: int


@dataclass(frozen=True, slots=True)
class _Failed:
    """A row whose send failed for a reason that may pass: put back, to be taken again."""

    row: OutboxRecord
    error: Exception


class OutboxRelay:
    """Publishes committed outbox rows, each saga's messages in the order they were written.

    The rows a coordinator transaction wrote are handed over once it commits
    (:meth:`hand_over`, from :meth:`SagaStore.transaction`) and published from memory: claimed
    by id (deleted, locked until the commit), sent, and committed once Kafka acknowledged
    them, with no read back. The table is read only for what memory does not hold: rows
    whose send failed (taken back by id, so in id order), rows another process wrote
    (:meth:`wake`), and a periodic sweep for what a crashed instance left. Every publisher
    deletes a row before sending it, so two relays never both publish it: a take skips rows
    locked by another (``SKIP LOCKED``), and a claim finds a row another relay took gone.
    The sweep takes only rows that were already there at the sweep before (ids up to the
    highest id seen then), so it seldom takes (reads back) rows another running coordinator
    is about to publish from memory. A crash between publishing and committing publishes a
    row twice: receivers de-duplicate (participants by command id).
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
            engine: The relay's own pool (the store's when None). Its commits only delete
                published rows, so the coordinator gives it one with ``synchronous_commit``
                off: a delete lost in a database crash publishes the row again, which
                receivers de-duplicate, and the relay never waits for a WAL flush.
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
        self._handed: list[OutboxRecord] = []
        """Committed rows to publish from memory, in id order."""
        self._owed: set[int] = set()
        """Ids of this instance's committed rows whose send failed: taken from the table."""
        self._take_requested = True  # at start: whatever an earlier run left
        self._ceiling = 0
        """The highest row id the last sweep saw: the next sweep takes rows up to it."""

    @property
    def published(self) -> int:
        """Rows published since start."""
        return self._published

    def hand_over(self, rows: Sequence[OutboxRecord]) -> None:
        """Publish these committed rows (called once the transaction that wrote them
        committed)."""
        self._handed.extend(rows)
        self._wake.set()

    def wake(self) -> None:
        """Ask the relay to take every pending row from the table now (for rows written
        without :meth:`hand_over`, e.g. by another process)."""
        self._take_requested = True
        self._wake.set()

    async def drain(self) -> int:
        """Publish what was handed over, what failed, and what was asked for by
        :meth:`wake`; returns how many rows were published or set aside.

        Raises:
            Exception: Publishing or the database failed; unsent rows stay pending.
        """
        return await self._counted(sweep=False)

    async def sweep(self) -> int:
        """:meth:`drain`, and take the rows that were pending at the sweep before this one
        (left by a crashed instance or written by another process); returns how many rows
        were published or set aside.

        Raises:
            Exception: Publishing or the database failed; unsent rows stay pending.
        """
        return await self._counted(sweep=True)

    async def _counted(self, *, sweep: bool) -> int:
        before = self._published + self.set_aside
        await self._work(sweep=sweep)
        return self._published + self.set_aside - before

    async def run(self) -> None:
        """Publish on every hand-over or wake-up and sweep periodically, until :meth:`stop`."""
        interval = self._settings.sweep_interval_s
        next_sweep = time.monotonic() + interval
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, next_sweep - time.monotonic()))
            self._wake.clear()
            # Swept on time even while hand-overs keep the relay awake.
            sweep = time.monotonic() >= next_sweep
            if sweep:
                next_sweep = time.monotonic() + interval
            try:
                await call_with_retries(
                    self.sweep if sweep else self.drain,
                    _RELAY_RETRIES,
                    on_retry=self._retry_log,
                    stop=self._stopping,
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

    async def _work(self, *, sweep: bool) -> None:
        """One round: publish from memory, then take from the table if needed."""
        while self._handed and not self._owed:
            rows, self._handed = self._handed, []
            await self._publish_from_memory(rows)
        if self._owed:
            # A send failed: every later row goes through the table too, so the failed one
            # goes out before them.
            self._owed.update(row.id for row in self._handed)
            self._handed = []
        if self._owed or self._take_requested or sweep:
            await self._drain_table(sweep=sweep)

    async def _publish_from_memory(self, rows: Sequence[OutboxRecord]) -> None:
        """Claim ``rows`` (delete them, locked until the commit), send those still there,
        and put back before committing those Kafka did not acknowledge; they become owed.

        A row another relay took first (a wake-up or a sweep) is missing from the claim: that
        relay publishes it, or puts it back for this one's owed take. The claim waits for such
        a relay's transaction, so a saga's later row never overtakes its earlier one.

        Raises:
            Exception: The first send that failed for a reason that may pass (after the
                claim of the acknowledged rows was committed).
        """
        try:
            async with self._engine.begin() as conn:
                claimed = await self._store.claim_outbox(conn, [row.id for row in rows])
                self._owed.update(row.id for row in rows if row.id not in claimed)
                sent, failed = await self._publish(conn, [r for r in rows if r.id in claimed])
        except BaseException:
            self._owed.update(row.id for row in rows)  # which went out is unknown: all again
            raise
        self._owed.update(f.row.id for f in failed)
        self._count_published(sent)
        if failed:
            raise failed[0].error  # a producer that lost its state is renewed by the next send

    async def _drain_table(self, *, sweep: bool) -> None:
        """Take and publish owed rows, every row if a take was requested, and on a sweep the
        rows the last sweep saw."""
        requested, self._take_requested = self._take_requested, False
        try:
            ceiling = None if requested else self._ceiling
            seen = await self._highest_id() if sweep else None
            while await self._take_once(ceiling) == self._settings.batch_size:
                pass
        except BaseException:
            self._take_requested = self._take_requested or requested
            raise
        # Every owed row still pending was taken (a row another relay held, it published).
        self._owed.clear()
        if seen is not None:
            self._ceiling = seen

    async def _highest_id(self) -> int:
        async with self._engine.connect() as conn:
            return await self._store.highest_outbox_id(conn)

    async def _take_once(self, ceiling: int | None) -> int:
        """Take, publish and delete up to one batch of rows; returns how many were taken.

        Raises:
            Exception: Publishing or the database failed; unsent rows stay pending.
        """
        async with self._engine.begin() as conn:
            # Taken (deleted) in one statement; what cannot be published is put back
            # before the commit.
            rows = await self._store.take_outbox(
                conn, limit=self._settings.batch_size, ceiling=ceiling, owed=self._owed
            )
            if not rows:
                return 0
            if self._handed:
                # Handed over while this take ran: published here already.
                taken = {row.id for row in rows}
                self._handed = [row for row in self._handed if row.id not in taken]
            sent, failed = await self._publish(conn, rows)
        self._count_published(sent)
        if failed:
            raise failed[0].error  # a producer that lost its state is renewed by the next send
        return len(rows)

    async def _publish(
        self, conn: AsyncConnection, rows: Sequence[OutboxRecord]
    ) -> tuple[_Sent, list[_Failed]]:
        """Send rows this transaction deleted; dead-letter those Kafka can never take and put
        back those whose send failed for a reason that may pass, before the commit.

        Rows Kafka can never take (too large, invalid topic) are recorded in their saga's
        history and stay deleted like sent ones, so they never hold back the rows behind them.
        """
        started_ns = time.time_ns()
        outcomes = await self._send(rows)
        sent = _Sent(
            [row for row, error in zip(rows, outcomes, strict=True) if error is None],
            started_ns,
            time.time_ns(),
        )
        unsendable = [
            (row, error)
            for row, error in zip(rows, outcomes, strict=True)
            if error is not None and _unsendable(error)
        ]
        failed = [
            _Failed(row, error)
            for row, error in zip(rows, outcomes, strict=True)
            if error is not None and not _unsendable(error)
        ]
        if unsendable:
            await self._set_aside(conn, unsendable)
        await self._store.restore_outbox(conn, [f.row for f in failed])
        return sent, failed

    def _count_published(self, sent: _Sent) -> None:
        if not sent.rows:
            return
        record_publishes(sent.rows, start_ns=sent.start_ns, end_ns=sent.end_ns)
        self._published += len(sent.rows)
        if self._on_published is not None:
            self._on_published(sent.rows, (sent.end_ns - sent.start_ns) / 1e9, self._clock.now())

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
