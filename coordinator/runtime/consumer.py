"""The reply consumer: reads replies, start requests and signals in batches and applies them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import TypeAlias, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, ConsumerStoppedError, KafkaError
from aiokafka.structs import ConsumerRecord

from coordinator.config import KafkaSettings
from coordinator.core.batch import BatchOutcome, Rejection, count_unknown_fields
from coordinator.observability.logs import envelope_extra
from coordinator.observability.tracing import with_header_traceparent
from coordinator.runtime.dead_letters import DeadLetterPublisher, RejectedRecord
from coordinator.runtime.processor import BatchProcessor, Inbound
from coordinator.runtime.transient import is_transient
from service_sdk.contract import (
    DeadLetterReason,
    Envelope,
    MalformedMessageError,
    SignalEnvelope,
    Topics,
    decode_envelope,
    decode_signal,
)
from service_sdk.offsets import PendingOffsets
from service_sdk.retry import RetryLog, RetryPolicy, call_with_retries, cancellation_requested

__all__ = ["ReplyConsumer"]

logger = logging.getLogger(__name__)

Record: TypeAlias = ConsumerRecord[bytes, bytes]
T = TypeVar("T")

# A lost database or broker connection is retried until it is back (or shutdown begins):
# the batch is not the cause, so it must not be dead-lettered for it.
_TRANSIENT_RETRIES = RetryPolicy(initial_backoff_s=0.05, max_backoff_s=5.0)


class _DrainOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    """Lets an in-flight batch finish and commit before partitions move to another instance."""

    def __init__(
        self, lock: asyncio.Lock, commit: Callable[[Collection[TopicPartition]], Awaitable[None]]
    ) -> None:
        self._lock = lock
        self._commit = commit

    async def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None:
        async with self._lock:
            await self._commit(revoked)

    async def on_partitions_assigned(self, assigned: object) -> None:
        return None


def _unknown_fields(messages: Sequence[Inbound]) -> dict[tuple[str, str], int]:
    counts = count_unknown_fields(m for m in messages if isinstance(m, Envelope))
    for message in messages:
        if isinstance(message, SignalEnvelope):
            for name in message.unknown_fields:
                key = (message.message_type, name)
                counts[key] = counts.get(key, 0) + 1
    return counts


class ReplyConsumer:
    """Consumes ``saga.replies``, ``saga.requests`` and ``saga.signals`` as one consumer-group
    member.

    Each ``getmany`` batch is applied in one database transaction; dead letters are then
    published and acknowledged, the outbox relay woken, and only then are offsets committed
    (at most every ``commit_interval_ms``, and before partitions move or the member stops).
    A batch that fails for a transient reason is retried as a whole; one that fails otherwise
    is applied message by message so a single poison message is dead-lettered alone.
    """

    def __init__(
        self,
        processor: BatchProcessor,
        dead_letters: DeadLetterPublisher,
        settings: KafkaSettings,
        topics: Topics,
        *,
        on_commit: Callable[[BatchOutcome], None] | None = None,
        hold_starts: Callable[[], bool] | None = None,
    ) -> None:
        """
        Args:
            hold_starts: While it returns True, start requests stay unread in Kafka (their
                partitions are paused); replies are read as always. Admission control sets it
                when the QUEUED backlog is full, so a spike waits in Kafka.
        """
        self._processor = processor
        self._hold_starts = hold_starts
        self._dead_letters = dead_letters
        self._settings = settings
        self._topics = topics
        self._on_commit = on_commit
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._offsets = PendingOffsets(settings.commit_interval_ms / 1000)
        self._retry_log = RetryLog(logger, "reply consumer")
        self.batches = 0

    async def start(self) -> None:
        """Join the consumer group."""
        if self._consumer is not None:
            return
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._settings.bootstrap_servers,
            client_id=self._settings.client_id,
            group_id=self._settings.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=self._settings.session_timeout_ms,
            heartbeat_interval_ms=self._settings.heartbeat_interval_ms,
            max_poll_records=self._settings.max_batch,
        )
        consumer.subscribe(
            [self._topics.replies, self._topics.requests, self._topics.signals],
            listener=_DrainOnRevoke(self._lock, self._commit),
        )
        try:
            await consumer.start()
        except BaseException:
            await consumer.stop()  # a failed start still holds connections and tasks
            raise
        self._consumer = consumer

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop` (readiness)."""
        return self._consumer is not None and not self._stopping.is_set()

    def assignment(self) -> frozenset[TopicPartition]:
        """The partitions this member owns now (empty before the first assignment)."""
        consumer = self._consumer
        return frozenset() if consumer is None else frozenset(consumer.assignment())

    async def partition_lag(self) -> dict[TopicPartition, int]:
        """Records behind the log end per owned partition (highwater - position).

        Partitions not fetched from yet (no highwater known) are absent.
        """
        consumer = self._consumer
        if consumer is None:
            return {}
        lag: dict[TopicPartition, int] = {}
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            try:
                async with asyncio.timeout(1.0):
                    position = await consumer.position(tp)
            except (KafkaError, TimeoutError):
                continue  # revoked meanwhile, or no position yet: the next sample has it
            lag[tp] = max(highwater - position, 0)
        return lag

    async def stop(self) -> None:
        """Finish the in-flight batch, commit, and leave the group. Idempotent.

        If the wait is cancelled (the grace period ran out), the group is still left.
        """
        self._stopping.set()
        if self._consumer is None:
            return
        try:
            async with self._lock:
                await self._commit()
        finally:
            consumer, self._consumer = self._consumer, None
            if consumer is not None:
                await consumer.stop()

    def _interrupted(self) -> bool:
        """True once shutdown began: a failure now says nothing about the messages."""
        return self._stopping.is_set() or cancellation_requested()

    async def run(self) -> None:
        """Consume until :meth:`stop` is called."""
        consumer = self._consumer
        if consumer is None:
            raise RuntimeError("ReplyConsumer.start() was not called")
        while not self._stopping.is_set():
            self._gate_starts(consumer)
            try:
                batch = await consumer.getmany(
                    timeout_ms=round(
                        1000 * self._offsets.wait_s(self._settings.poll_timeout_ms / 1000)
                    ),
                    max_records=self._settings.max_batch,
                )
            except ConsumerStoppedError:
                return
            if not batch or self._stopping.is_set():
                if self._offsets.due() and not self._stopping.is_set():
                    async with self._lock:
                        await self._commit()
                continue
            async with self._lock:
                try:
                    await self._handle(consumer, batch)
                except Exception as exc:
                    if not self._interrupted():
                        raise
                    # Not committed: the batch is redelivered to whoever owns it next.
                    logger.warning("abandoning a batch at shutdown: %s", exc)
                    if cancellation_requested():
                        raise asyncio.CancelledError from exc
                    return

    def _gate_starts(self, consumer: AIOKafkaConsumer) -> None:
        """Pause or resume the start-request partitions this member owns."""
        if self._hold_starts is None:
            return
        requests = {tp for tp in consumer.assignment() if tp.topic == self._topics.requests}
        paused = consumer.paused() & requests
        if self._hold_starts():
            if requests - paused:
                consumer.pause(*(requests - paused))
                logger.info("admission backlog full: holding start requests in Kafka")
        elif paused:
            consumer.resume(*paused)
            logger.info("admission has room again: reading start requests")

    async def _handle(
        self, consumer: AIOKafkaConsumer, batch: dict[TopicPartition, list[Record]]
    ) -> None:
        records = [record for partition in batch.values() for record in partition]
        letters: list[RejectedRecord] = []
        envelopes: list[Inbound] = []
        origins: list[Record] = []
        for record in records:
            try:
                if record.topic == self._topics.signals:
                    envelopes.append(decode_signal(record.value))
                else:
                    envelopes.append(with_header_traceparent(decode_envelope(record.value), record))
                origins.append(record)
            except MalformedMessageError as exc:
                letters.append(RejectedRecord(record, exc.reason_code, exc))
        outcome = await self._apply(envelopes)
        letters.extend(
            RejectedRecord(origins[r.index], r.reason, r.error) for r in outcome.rejections
        )
        if letters:
            await self._retry_transient(lambda: self._dead_letters.publish(letters))
        outcome.records = len(records)
        outcome.unknown_fields = _unknown_fields(envelopes)
        if self._on_commit is not None:
            self._on_commit(outcome)
        self._offsets.add(
            {tp: partition[-1].offset + 1 for tp, partition in batch.items() if partition}
        )
        if self._offsets.due():
            await self._commit()
        self.batches += 1

    async def _commit(self, partitions: Collection[TopicPartition] | None = None) -> None:
        """Commit the pending offsets (of ``partitions`` only, if given)."""
        offsets = self._offsets.take(partitions)
        consumer = self._consumer
        if not offsets or consumer is None:
            return
        try:
            await consumer.commit(offsets)
        except CommitFailedError as exc:
            # The group rebalanced under us; the new owner re-reads these records and the
            # inbox recognises every one already applied.
            logger.warning("offset commit failed after a rebalance: %s", exc)

    async def _apply(self, envelopes: Sequence[Inbound]) -> BatchOutcome:
        if not envelopes:
            return BatchOutcome()
        try:
            return await self._with_retries(envelopes)
        except Exception as exc:
            # A cancelled transaction surfaces as a database error: never dead-letter for it.
            if is_transient(exc) or self._interrupted():
                raise
            logger.exception("batch of %d failed; applying one by one", len(envelopes))
        merged = BatchOutcome()
        for index, envelope in enumerate(envelopes):
            try:
                single = await self._with_retries([envelope])
            except Exception as exc:
                if is_transient(exc) or self._interrupted():
                    raise
                logger.exception(
                    "message %s cannot be applied",
                    envelope.message_id,
                    extra=envelope_extra(envelope)
                    if isinstance(envelope, Envelope)
                    else {"saga_id": envelope.saga_id, "message_id": envelope.message_id},
                )

                merged.rejections.append(Rejection(index, DeadLetterReason.PROCESSING_ERROR, exc))
                continue
            merged.applied += single.applied
            merged.duplicates += single.duplicates
            merged.parked += single.parked
            merged.outbox_ids.extend(single.outbox_ids)
            merged.transitions.extend(single.transitions)
            merged.rejections.extend(type(r)(index, r.reason, r.error) for r in single.rejections)
        return merged

    async def _with_retries(self, envelopes: Sequence[Inbound]) -> BatchOutcome:
        return await self._retry_transient(lambda: self._processor.process(envelopes))

    async def _retry_transient(self, action: Callable[[], Awaitable[T]]) -> T:
        return await call_with_retries(
            action,
            _TRANSIENT_RETRIES,
            retry_on=is_transient,
            on_retry=self._retry_log,
            stop=self._stopping,
        )
