"""Applies a batch of inbound messages to saga state in ONE database transaction.

For a batch of start requests, replies and signals the processor, inside a single
transaction: locks the sagas the replies and signals belong to, records every new message id
in the inbox (a redelivered message is recognised there and changes nothing), runs the pure
engine, and writes the new saga states, their history and the outgoing messages (outbox).
Kafka offsets are committed by the caller only after this returns. Messages that cannot be
applied are returned as rejections for the caller to dead-letter; they are not written to the
inbox (a signal the engine refuses is taken out of it again, in the same transaction), so a
repaired message can be replayed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.core.admission import AdmissionLimits
from coordinator.core.batch import BatchOutcome, Rejection
from coordinator.core.clock import Clock
from coordinator.core.definition import SagaDefinition, SagaRegistry
from coordinator.core.errors import InvalidSagaDataError, SagaError
from coordinator.core.machine import apply, start_saga
from coordinator.core.state import (
    ReplyReceived,
    SagaInput,
    SagaInstance,
    SignalReceived,
    StartSaga,
    Transition,
)
from coordinator.observability.logs import log_transitions, log_unexpected_replies
from coordinator.observability.tracing import ensure_traceparent, record_transitions
from coordinator.runtime.parking import ReplyParking
from coordinator.runtime.starts import RepeatedStarts
from coordinator.store.admission import AdmissionStore
from coordinator.store.persist import persist
from coordinator.store.saga_store import SagaStore
from service_sdk.contract import DeadLetterReason, Envelope, MessageKind, SignalEnvelope, Topics

__all__ = ["BatchProcessor", "Inbound"]

logger = logging.getLogger(__name__)

Inbound = Envelope | SignalEnvelope
"""What the processor applies: start requests and replies (envelopes), and signals."""


def _is_start(message: Inbound) -> bool:
    return isinstance(message, Envelope) and message.kind is MessageKind.START


def _for_saga(message: Inbound) -> bool:
    """True for the messages applied to an existing saga: replies and signals."""
    return isinstance(message, SignalEnvelope) or message.kind is MessageKind.REPLY


def _input(message: Inbound) -> SagaInput:
    if isinstance(message, SignalEnvelope):
        return SignalReceived(message.message_id, message.name, dict(message.payload))
    return _reply_input(message)


def _signal_reason(rejection: str) -> DeadLetterReason:
    try:
        return DeadLetterReason(rejection)
    except ValueError:
        # A reason this contract version does not name still dead-letters the signal.
        return DeadLetterReason.PROCESSING_ERROR


def _reply_input(envelope: Envelope) -> ReplyReceived:
    assert envelope.outcome is not None  # checked by _screen
    return ReplyReceived(
        message_id=envelope.message_id,
        step=envelope.step,
        command_id=envelope.command_id,
        attempt=envelope.attempt,
        outcome=envelope.outcome,
        payload=dict(envelope.payload),
        error=envelope.error,
    )


def _start_id(start: Transition) -> str:
    """The message id of the start request a start transition came from."""
    return start.history[0].message_id or ""


@dataclass
class _Applied:
    """What the engine decided for a batch, before the new sagas are inserted."""

    starts: list[Transition] = field(default_factory=list)
    changed_ids: set[str] = field(default_factory=set)
    repeats: list[tuple[int, Envelope]] = field(default_factory=list)
    """Starts of a saga id started earlier in the same batch."""
    refused: list[str] = field(default_factory=list)
    """Message ids of the signals the engine refused (taken out of the inbox again)."""


class BatchProcessor:
    """Applies batches of start requests and replies; the runtime's one writer of saga state."""

    def __init__(
        self,
        store: SagaStore,
        registry: SagaRegistry,
        topics: Topics,
        clock: Clock,
        *,
        admission: AdmissionLimits | None = None,
    ) -> None:
        self._store = store
        self._registry = registry
        self._topics = topics
        self._clock = clock
        self._limits = admission or AdmissionLimits()
        self._admission = AdmissionStore()
        self._parking = ReplyParking(registry)
        self._repeats = RepeatedStarts(store, registry)

    def _screen(self, index: int, envelope: Inbound) -> Rejection | None:
        if isinstance(envelope, SignalEnvelope):
            return None  # validated when decoded; its saga is looked up with the replies
        if envelope.kind not in (MessageKind.START, MessageKind.REPLY):
            return Rejection(
                index,
                DeadLetterReason.UNEXPECTED_KIND,
                SagaError(f"a {envelope.kind.value} message cannot be applied to a saga"),
            )
        # A reply of a type not registered here may belong to a saga another coordinator runs
        # (a type added by a rolling deploy): it is parked, or rejected if no such saga exists.
        if envelope.kind is MessageKind.START and envelope.saga_type not in self._registry:
            return Rejection(
                index,
                DeadLetterReason.UNKNOWN_SAGA_TYPE,
                SagaError(f"unknown saga type {envelope.saga_type!r}", saga_id=envelope.saga_id),
            )
        if envelope.kind is MessageKind.REPLY and envelope.outcome is None:
            return Rejection(
                index,
                DeadLetterReason.SCHEMA,
                SagaError("a reply must carry an outcome", saga_id=envelope.saga_id),
            )
        return None

    async def process(self, envelopes: Sequence[Inbound]) -> BatchOutcome:
        """Apply ``envelopes`` (in order) in one transaction and return what happened.

        Raises whatever the database raises; the caller retries or isolates the batch.
        """
        outcome = BatchOutcome()
        now = self._clock.now()
        started_ns = time.time_ns()
        candidates = self._screen_all(envelopes, outcome)
        if not candidates:
            return outcome
        # Starts are decided before the transaction: the engine is pure and a bad start
        # (invalid data) must not take a lock or an inbox row.
        starts = self._decide_starts(candidates, now, outcome)
        async with self._store.transaction() as conn:
            current = await self._lock_sagas(conn, candidates)
            # A reply for a saga of a version not loaded here is kept, not applied (parking).
            candidates = await self._parking.park_unloaded(conn, candidates, current, now, outcome)
            accepted = self._admit(candidates, starts, current, outcome)
            if not accepted:
                return outcome
            fresh = await self._store.insert_inbox(
                conn, [(e.message_id, e.saga_id) for _, e in accepted], now
            )
            batch = self._apply_replies(accepted, fresh, starts, current, now, outcome)
            # A refused signal is dead-lettered, not consumed: out of the inbox again, so a
            # redelivery (the dead letter not yet published) or a replay is judged anew.
            await self._store.delete_inbox_messages(conn, batch.refused)
            admitted = await self._admit_or_queue(conn, batch.starts, now)
            existing = await self._insert_starts(conn, admitted, outcome)
            outcome.outbox_ids = await persist(
                self._store,
                conn,
                self._topics,
                [current[i] for i in sorted(batch.changed_ids)],
                [t for _, t in outcome.transitions],
                now,
                registry=self._registry,
            )
            # A saga id started again: a duplicate, or (other data) a conflicting start.
            by_message = {e.message_id: (i, e) for i, e in accepted if isinstance(e, Envelope)}
            await self._repeats.settle(
                conn,
                [*batch.repeats, *(by_message[m] for m in existing)],
                {t.instance.saga_id: t for t in admitted if _start_id(t) not in existing},
                outcome,
                now,
            )
        log_transitions(logger, outcome.transitions)
        log_unexpected_replies(logger, outcome.transitions)
        record_transitions(
            outcome.transitions,
            start_ns=started_ns,
            end_ns=time.time_ns(),
            batch_size=len(envelopes),
        )
        return outcome

    def _screen_all(
        self, envelopes: Sequence[Inbound], outcome: BatchOutcome
    ) -> list[tuple[int, Inbound]]:
        """The messages this processor can apply, with their batch index; rejects the rest."""
        candidates: list[tuple[int, Inbound]] = []
        for index, envelope in enumerate(envelopes):
            rejection = self._screen(index, envelope)
            if rejection is None:
                candidates.append((index, envelope))
            else:
                outcome.rejections.append(rejection)
        return candidates

    def _decide_starts(
        self, candidates: Sequence[tuple[int, Inbound]], now: datetime, outcome: BatchOutcome
    ) -> dict[int, Transition]:
        """The start transition of every start request whose data is valid, by batch index."""
        starts: dict[int, Transition] = {}
        for index, envelope in candidates:
            if not isinstance(envelope, Envelope) or envelope.kind is not MessageKind.START:
                continue
            definition = self._registry.get(envelope.saga_type)
            try:
                starts[index] = start_saga(
                    definition,
                    envelope.saga_id,
                    StartSaga(
                        envelope.message_id,
                        dict(envelope.payload),
                        # Every saga gets one trace, started here if the request had none.
                        ensure_traceparent(envelope.traceparent),
                    ),
                    now,
                )
            except InvalidSagaDataError as exc:
                outcome.rejections.append(Rejection(index, DeadLetterReason.INVALID_DATA, exc))
        return starts

    async def _lock_sagas(
        self, conn: AsyncConnection, candidates: Sequence[tuple[int, Inbound]]
    ) -> dict[str, SagaInstance]:
        """Lock (``FOR UPDATE``) and read the sagas the replies and signals belong to."""
        saga_ids = {e.saga_id for _, e in candidates if _for_saga(e)}
        if not saga_ids:
            return {}
        return await self._store.select_sagas_for_update(conn, saga_ids)

    def _admit(
        self,
        candidates: Sequence[tuple[int, Inbound]],
        starts: Mapping[int, Transition],
        current: Mapping[str, SagaInstance],
        outcome: BatchOutcome,
    ) -> list[tuple[int, Inbound]]:
        """Valid starts, and replies and signals to existing sagas; one to an unknown saga is
        rejected."""
        accepted: list[tuple[int, Inbound]] = []
        for index, envelope in candidates:
            if _is_start(envelope):
                if index in starts:
                    accepted.append((index, envelope))
            elif envelope.saga_id in current:
                accepted.append((index, envelope))
            elif isinstance(envelope, SignalEnvelope):
                outcome.rejections.append(
                    Rejection(
                        index,
                        DeadLetterReason.UNKNOWN_SAGA,
                        SagaError(
                            f"signal {envelope.name!r} for an unknown saga",
                            saga_id=envelope.saga_id,
                        ),
                    )
                )
            elif envelope.saga_type not in self._registry:
                outcome.rejections.append(
                    Rejection(
                        index,
                        DeadLetterReason.UNKNOWN_SAGA_TYPE,
                        SagaError(
                            f"unknown saga type {envelope.saga_type!r}", saga_id=envelope.saga_id
                        ),
                    )
                )
            else:
                outcome.rejections.append(
                    Rejection(
                        index,
                        DeadLetterReason.UNKNOWN_SAGA,
                        SagaError("reply for an unknown saga", saga_id=envelope.saga_id),
                    )
                )
        return accepted

    def _apply_replies(
        self,
        accepted: Sequence[tuple[int, Inbound]],
        fresh: Collection[str],
        starts: Mapping[int, Transition],
        current: dict[str, SagaInstance],
        now: datetime,
        outcome: BatchOutcome,
    ) -> _Applied:
        """Run the engine on every message new to the inbox, in batch order.

        Replies advance ``current`` in place; starts are collected for one insert.
        """
        applied = _Applied()
        seen: set[str] = set()
        starting: set[str] = set()
        for index, envelope in accepted:
            if envelope.message_id not in fresh or envelope.message_id in seen:
                outcome.duplicates += 1
                continue
            seen.add(envelope.message_id)
            if isinstance(envelope, Envelope) and envelope.kind is MessageKind.START:
                if envelope.saga_id in starting:
                    # Starting the same saga id twice starts it once.
                    applied.repeats.append((index, envelope))
                    continue
                starting.add(envelope.saga_id)
                applied.starts.append(starts[index])
                continue
            before = current[envelope.saga_id]
            saga_def: type[SagaDefinition[Any]] = self._registry.get(
                before.saga_type, before.definition_version
            )
            transition = apply(saga_def, before, _input(envelope), now)
            current[envelope.saga_id] = transition.instance
            if transition.changed:
                applied.changed_ids.add(envelope.saga_id)
            outcome.transitions.append((before, transition))  # a refusal's history too
            if transition.rejection is not None and isinstance(envelope, SignalEnvelope):
                applied.refused.append(envelope.message_id)
                outcome.rejections.append(
                    Rejection(
                        index,
                        _signal_reason(transition.rejection),
                        SagaError(
                            f"signal {envelope.name!r} refused: {transition.rejection} "
                            f"(saga {before.status.value}, at {before.current_step or '-'})",
                            saga_id=envelope.saga_id,
                        ),
                    )
                )
                continue
            outcome.applied += 1
        return applied

    async def _admit_or_queue(
        self, conn: AsyncConnection, starts: Sequence[Transition], now: datetime
    ) -> list[Transition]:
        """The starts as they may go: within the admission caps as decided, beyond them QUEUED.

        New starts queue behind sagas already QUEUED, so admission stays first come, first
        served. The admission lock makes coordinators take turns at counting.
        """
        if not starts or self._limits.unlimited:
            return list(starts)
        await self._admission.lock(conn)
        in_flight = await self._admission.count_in_flight(conn)
        backlog = await self._admission.count_queued(conn)
        decided: list[Transition] = []
        for transition in starts:
            instance = transition.instance
            definition = self._registry.get(instance.saga_type, instance.definition_version)
            service = definition.entry_service()
            if backlog == 0 and in_flight.has_room(self._limits, instance.saga_type, service):
                in_flight.add(instance.saga_type, service)
                decided.append(transition)
                continue
            backlog += 1
            request = StartSaga(transition.history[0].message_id or "", instance.data)
            decided.append(
                start_saga(
                    definition,
                    instance.saga_id,
                    replace(
                        request,
                        traceparent=instance.traceparent,
                        parent_saga_id=instance.parent_saga_id,
                        parent_step=instance.parent_step,
                    ),
                    now,
                    admit=False,
                )
            )
        return decided

    async def _insert_starts(
        self, conn: AsyncConnection, starts: Sequence[Transition], outcome: BatchOutcome
    ) -> set[str]:
        """Insert the new sagas; returns the message ids of starts whose saga id exists."""
        if not starts:
            return set()
        inserted = await self._store.insert_sagas(conn, [t.instance for t in starts])
        existing: set[str] = set()
        for transition in starts:
            if transition.instance.saga_id in inserted:
                outcome.transitions.append((None, transition))
                outcome.applied += 1
            else:
                # Starting the same saga id twice starts it once.
                existing.add(_start_id(transition))
        return existing
