"""Parking: replies (and signals) for sagas whose definition version this coordinator lacks.

A saga always advances with the definition version it started with. When a reply arrives for
a saga whose version is not loaded here (a rolling deploy: old and new coordinators side by
side), :class:`ReplyParking` keeps the reply in ``saga.parked_reply`` in the batch's own
transaction, and the offset moves on: the reply is neither applied with another version nor
lost. :class:`ParkedReplyResumer` runs in every coordinator and applies, through the batch
processor, the parked replies of the versions it has; the processor's inbox makes that
idempotent (a crash between applying and deleting a parked reply applies it once).

Signals are parked the same way. A parked signal the saga then refuses is dead-lettered by the
resumer to ``saga.signals.dlq`` with its reason, like one refused on arrival (its original
partition and offset are not kept: ``-1``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from aiokafka.structs import ConsumerRecord
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.core.batch import BatchOutcome
from coordinator.core.definition import SagaRegistry
from coordinator.core.state import SagaInstance
from coordinator.runtime.dead_letters import DeadLetterPublisher, RejectedRecord
from coordinator.store.parking import ParkedReply, ParkingStore
from coordinator.store.saga_store import SagaStore
from service_sdk.contract import (
    Envelope,
    MalformedMessageError,
    MessageKind,
    SignalEnvelope,
    Topics,
    decode_envelope,
    decode_signal,
    encode_headers,
)
from service_sdk.retry import RetryLog, RetryPolicy, call_with_retries

if TYPE_CHECKING:
    from coordinator.runtime.processor import BatchProcessor, Inbound

__all__ = ["ParkedReplyResumer", "ReplyParking", "decode_parked", "this_coordinator"]

logger = logging.getLogger(__name__)


def decode_parked(body: bytes) -> Envelope | SignalEnvelope:
    """A parked message: a reply envelope, or a signal (``"kind": "signal"``).

    Raises:
        MalformedMessageError: Neither.
    """
    try:
        return decode_envelope(body)
    except MalformedMessageError:
        return decode_signal(body)


def this_coordinator() -> str:
    """Names this coordinator process in ``parked_by``: host and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


class ReplyParking:
    """Sets aside, inside a batch's transaction, the replies of sagas of unloaded versions."""

    def __init__(self, registry: SagaRegistry, *, name: str | None = None) -> None:
        self._registry = registry
        self._store = ParkingStore()
        self._name = name or this_coordinator()

    async def park_unloaded(
        self,
        conn: AsyncConnection,
        candidates: Sequence[tuple[int, Inbound]],
        current: dict[str, SagaInstance],
        now: datetime,
        outcome: BatchOutcome,
    ) -> list[tuple[int, Inbound]]:
        """The candidates this coordinator can apply; parks the others' replies and signals."""
        keep: list[tuple[int, Inbound]] = []
        parked: list[ParkedReply] = []
        for index, envelope in candidates:
            saga = current.get(envelope.saga_id)
            if (
                (isinstance(envelope, Envelope) and envelope.kind is not MessageKind.REPLY)
                or saga is None
                or self._registry.has(saga.saga_type, saga.definition_version)
            ):
                keep.append((index, envelope))
                continue
            parked.append(
                ParkedReply(
                    envelope.message_id,
                    saga.saga_id,
                    saga.saga_type,
                    saga.definition_version,
                    envelope.to_bytes(),
                )
            )
        if parked:
            await self._store.insert_parked(conn, parked, self._name, now)
            outcome.parked += len(parked)
            for reply in parked:
                logger.warning(
                    "saga %s runs on %s version %d, not loaded here: its message %s is parked "
                    "until a coordinator that has that version takes it",
                    reply.saga_id,
                    reply.saga_type,
                    reply.definition_version,
                    reply.message_id,
                    extra={"saga_id": reply.saga_id},
                )
        return keep


class ParkedReplyResumer:
    """Applies the parked replies of the definition versions this coordinator has."""

    def __init__(
        self,
        store: SagaStore,
        registry: SagaRegistry,
        processor: BatchProcessor,
        *,
        interval_s: float = 1.0,
        batch_size: int = 200,
        on_commit: Callable[[BatchOutcome], None] | None = None,
        dead_letters: DeadLetterPublisher | None = None,
        topics: Topics | None = None,
    ) -> None:
        """
        Args:
            dead_letters: Publishes the parked signals their saga refuses (to
                ``<topics.signals>.dlq``); without it they stay parked.
        """
        self._store = store
        self._dead_letters = dead_letters
        self._topics = topics or Topics()
        self._registry = registry
        self._processor = processor
        self._interval_s = interval_s
        self._batch_size = batch_size
        self._parking = ParkingStore()
        self._on_commit = on_commit
        self._stopping = asyncio.Event()
        # A failed pass is tried again at the next interval: parked rows stay until one works.
        self._retries = RetryPolicy(
            initial_backoff_s=interval_s, max_backoff_s=interval_s, multiplier=1.0
        )
        self._retry_log = RetryLog(logger, "resuming parked replies", level=logging.ERROR)
        self.resumed = 0

    async def resume_once(self) -> int:
        """Apply up to one batch of parked replies; returns how many were taken."""
        async with self._store.engine.begin() as conn:
            claimed = await self._parking.claim_parked(
                conn, self._registry.keys(), self._batch_size
            )
            if not claimed:
                return 0
            envelopes: list[Inbound] = []
            for reply in claimed:
                try:
                    envelopes.append(decode_parked(reply.body))
                except MalformedMessageError:  # pragma: no cover - written by us, from an envelope
                    logger.exception("parked reply %s is unreadable", reply.message_id)
            # Its own transaction: the claim's locks keep other resumers off these rows, and the
            # inbox makes a repeat harmless should this one roll back after the apply committed.
            outcome = await self._processor.process(envelopes)
            refused = (
                [r for r in outcome.rejections if isinstance(envelopes[r.index], SignalEnvelope)]
                if self._dead_letters is not None
                else []
            )
            if refused and self._dead_letters is not None:
                # Before the parked rows go: a failed publish rolls their deletion back.
                await self._dead_letters.publish(
                    [
                        RejectedRecord(self._record(envelopes[r.index]), r.reason, r.error)
                        for r in refused
                    ]
                )
            rejected = {envelopes[r.index].message_id for r in outcome.rejections} - {
                envelopes[r.index].message_id for r in refused
            }
            for rejection in outcome.rejections:
                if rejection in refused:
                    continue
                logger.error(
                    "parked reply %s cannot be applied (%s): %s; it stays parked",
                    envelopes[rejection.index].message_id,
                    rejection.reason,
                    rejection.error,
                )
            done = [r.message_id for r in claimed if r.message_id not in rejected]
            await self._parking.delete_parked(conn, done)
        self.resumed += len(done)
        if self._on_commit is not None:
            self._on_commit(outcome)
        if done:
            logger.info("resumed %d parked repl(ies)", len(done))
        return len(claimed)

    def _record(self, message: Inbound) -> ConsumerRecord[bytes, bytes]:
        """A parked signal as the record it came as (its position is not kept)."""
        value = message.to_bytes()
        key = message.key()
        return ConsumerRecord(
            topic=self._topics.signals,
            partition=-1,
            offset=-1,
            timestamp=-1,
            timestamp_type=0,
            key=key,
            value=value,
            checksum=None,
            serialized_key_size=len(key),
            serialized_value_size=len(value),
            headers=encode_headers(message.headers()),
        )

    async def run(self) -> None:
        """Resume every ``interval_s`` (at once again after a full batch) until stopped."""
        while not self._stopping.is_set():
            try:
                taken = await call_with_retries(
                    self.resume_once, self._retries, on_retry=self._retry_log, stop=self._stopping
                )
            except Exception:
                if not self._stopping.is_set():
                    raise  # not reached: every failure is retried until stop
                return
            if taken < self._batch_size:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self._interval_s)

    def stop(self) -> None:
        """Ask :meth:`run` to return after the current pass."""
        self._stopping.set()
