"""Operator actions on sagas: look at one, list them, retry or abort one.

Retry and abort run the pure engine on the locked saga row and persist the transition the way
the reply consumer does (:func:`coordinator.store.persist.persist`: saga row with its version
check, history, outbox), in one transaction. The engine records the action in the saga's
history (``operator_action``, with actor and reason) and refuses actions that do not apply.

Publishing: inside a coordinator process, ``on_commit`` wakes the outbox relay, so the
commands go out at once. From another process (the ``saga`` CLI) nothing is published here:
the running coordinators' periodic outbox sweep (``relay.sweep_interval_s``, 1 s by default)
publishes a row once it has seen it pending at the sweep before, so a command follows an
operator action within about two seconds.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from coordinator.core.clock import Clock
from coordinator.core.definition import SagaRegistry
from coordinator.core.errors import (
    InvalidOperatorActionError,
    SagaNotFoundError,
    UnknownSagaVersionError,
)
from coordinator.core.machine import apply
from coordinator.core.migration import migrate_saga
from coordinator.core.state import OperatorAbort, OperatorRetry, SagaInstance, SagaStatus
from coordinator.store.children import ChildStore
from coordinator.store.messages import command_message
from coordinator.store.parking import ParkedSaga, ParkingStore
from coordinator.store.persist import persist
from coordinator.store.records import HistoryRecord
from coordinator.store.saga_queries import DataHorizon, SagaFilter, SagaQueries
from coordinator.store.saga_store import SagaStore
from coordinator.store.versions import VersionStore
from service_sdk.contract import Topics

__all__ = [
    "ActionResult",
    "MigrationResult",
    "OperatorActions",
    "SagaTimeline",
    "SentCommand",
    "child_as_dict",
    "saga_as_dict",
]

_MAX_LIST = 1_000
_APPLIES_TO = {
    "retry": "RUNNING, COMPENSATING or FAILED sagas",
    "abort": "RUNNING or COMPENSATING sagas",
}


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def saga_as_dict(instance: SagaInstance) -> dict[str, Any]:
    """A saga instance as JSON-ready values (timestamps in ISO 8601)."""
    return {
        "saga_id": instance.saga_id,
        "saga_type": instance.saga_type,
        "definition_version": instance.definition_version,
        "status": instance.status.value,
        "current_step": instance.current_step,
        "command_id": instance.command_id,
        "attempt": instance.attempt,
        "epoch": instance.epoch,
        "deadline_at": _iso(instance.deadline_at),
        "service": instance.service,
        "picked_up_at": _iso(instance.picked_up_at),
        "in_doubt_step": instance.in_doubt_step,
        "in_doubt_command_id": instance.in_doubt_command_id,
        "awaiting": [
            {
                "step": e.step,
                "kind": e.kind.value,
                "command_id": e.command_id,
                "attempt": e.attempt,
                "deadline_at": _iso(e.deadline_at),
                "service": e.service,
                "picked_up_at": _iso(e.picked_up_at),
                "compensates": e.compensates,
            }
            for e in instance.awaiting
        ],
        "stage": instance.stage,
        "completed_steps": list(instance.completed_steps),
        "skipped_steps": list(instance.skipped_steps),
        "compensated_steps": list(instance.compensated_steps),
        "pending_signals": [
            {"message_id": s.message_id, "name": s.name} for s in instance.pending_signals
        ],
        "parent_saga_id": instance.parent_saga_id,
        "parent_step": instance.parent_step,
        "failure_reason": instance.failure_reason,
        "data": instance.data,
        "business_keys": list(instance.business_keys),
        "traceparent": instance.traceparent,
        "version": instance.version,
        "created_at": _iso(instance.created_at),
        "updated_at": _iso(instance.updated_at),
    }


def child_as_dict(child: SagaInstance) -> dict[str, Any]:
    """A child saga as its parent shows it: the link and where the child is."""
    return {
        "saga_id": child.saga_id,
        "saga_type": child.saga_type,
        "status": child.status.value,
        "parent_step": child.parent_step,
        "created_at": _iso(child.created_at),
        "updated_at": _iso(child.updated_at),
    }


@dataclass(frozen=True)
class SagaTimeline:
    """A saga and its history, oldest entry first.

    Attributes:
        children: The sagas this one started as child steps (found by their
            ``parent_saga_id``), oldest first; the parent is ``instance.parent_saga_id``.
    """

    instance: SagaInstance
    history: tuple[HistoryRecord, ...]
    children: tuple[SagaInstance, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready values: ``{"saga": {...}, "children": [...], "history": [...]}``."""
        return {
            "saga": saga_as_dict(self.instance),
            "children": [child_as_dict(c) for c in self.children],
            "history": [
                {
                    "id": r.id,
                    "at": _iso(r.at),
                    "kind": r.kind,
                    "step": r.step,
                    "message_id": r.message_id,
                    "detail": r.detail,
                }
                for r in self.history
            ],
        }


@dataclass(frozen=True)
class SentCommand:
    """A command an operator action sent (or, in a dry run, would send).

    Attributes:
        key: The Kafka record key (the saga id).
    """

    topic: str
    key: str
    message_type: str
    step: str
    command_id: str
    attempt: int


@dataclass(frozen=True)
class MigrationResult:
    """What ``saga migrate`` did, or with ``dry_run`` would have done (nothing is written)."""

    saga_id: str
    from_version: int
    to_version: int
    status: SagaStatus
    current_step: str | None
    data_before: dict[str, Any]
    data_after: dict[str, Any]
    upcasters: tuple[str, ...]
    dry_run: bool

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "saga_id": self.saga_id,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "status": self.status.value,
            "current_step": self.current_step,
            "data_before": self.data_before,
            "data_after": self.data_after,
            "upcasters": list(self.upcasters),
            "dry_run": self.dry_run,
        }


@dataclass(frozen=True)
class ActionResult:
    """What an operator action did, or with ``dry_run`` would have done.

    Attributes:
        changed: False when the engine recorded the action but changed nothing (aborting a
            saga that compensates already).
        commands: The commands sent, in order.
        events: The lifecycle events published (their message types), in order.
        outbox_ids: The outbox rows written; empty in a dry run, where nothing is written.
    """

    saga_id: str
    action: str
    actor: str
    reason: str
    dry_run: bool
    changed: bool
    status_before: SagaStatus
    status_after: SagaStatus
    epoch: int
    commands: tuple[SentCommand, ...]
    events: tuple[str, ...]
    outbox_ids: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready values."""
        return {
            "saga_id": self.saga_id,
            "action": self.action,
            "actor": self.actor,
            "reason": self.reason,
            "dry_run": self.dry_run,
            "changed": self.changed,
            "status_before": self.status_before.value,
            "status_after": self.status_after.value,
            "epoch": self.epoch,
            "commands": [
                {
                    "topic": c.topic,
                    "key": c.key,
                    "message_type": c.message_type,
                    "step": c.step,
                    "command_id": c.command_id,
                    "attempt": c.attempt,
                }
                for c in self.commands
            ],
            "events": list(self.events),
            "outbox_ids": list(self.outbox_ids),
        }


class OperatorActions:
    """Inspect sagas and act on them; every action is one database transaction.

    Args:
        on_commit: Called after an action committed outbox rows; the coordinator passes its
            relay's ``wake``. Without it the rows wait for a coordinator's periodic sweep.
    """

    def __init__(
        self,
        store: SagaStore,
        registry: SagaRegistry,
        topics: Topics,
        clock: Clock,
        *,
        on_commit: Callable[[], None] | None = None,
    ) -> None:
        self._store = store
        self._registry = registry
        self._topics = topics
        self._clock = clock
        self._on_commit = on_commit

    async def show(self, saga_id: str) -> SagaTimeline:
        """The saga and its history.

        Raises:
            SagaNotFoundError: No saga has this id.
        """
        # REPEATABLE READ: the row and the history come from one snapshot, so the history
        # never shows a step the row does not (or the other way round).
        async with self._store.engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="REPEATABLE READ")
            async with conn.begin():
                instance = await self._store.select_saga(conn, saga_id)
                if instance is None:
                    raise SagaNotFoundError(f"no saga with id {saga_id!r}", saga_id=saga_id)
                history = await self._store.select_history(conn, saga_id)
                children = await ChildStore().select_children(conn, saga_id)
        return SagaTimeline(instance, tuple(history), tuple(children))

    async def list(
        self,
        status: SagaStatus | None = None,
        saga_type: str | None = None,
        limit: int = 50,
        offset: int = 0,
        *,
        business_key: str | None = None,
    ) -> builtins.list[SagaInstance]:
        """Sagas newest first, optionally of one status and/or type, or with a business key
        (``name=value``, see :mod:`coordinator.core.business_keys`).

        Raises:
            ValueError: ``limit`` is not in 1..1000 or ``offset`` is negative.
        """
        if not 1 <= limit <= _MAX_LIST:
            raise ValueError(f"limit must be between 1 and {_MAX_LIST}, got {limit}")
        if offset < 0:
            raise ValueError(f"offset must not be negative, got {offset}")
        chosen = SagaFilter(
            statuses=(status,) if status is not None else (),
            saga_type=saga_type,
            business_key=business_key,
        )
        async with self._store.engine.connect() as conn:
            return await SagaQueries().select_sagas(conn, chosen, limit=limit, offset=offset)

    async def horizon(self) -> DataHorizon:
        """How far back the stored sagas go (retention deletes finished ones)."""
        async with self._store.engine.connect() as conn:
            return await SagaQueries().select_horizon(conn)

    async def migrate(
        self, saga_id: str, to_version: int, *, actor: str, reason: str, dry_run: bool = False
    ) -> MigrationResult:
        """Move a saga onto version ``to_version`` of its definition, its data upcast.

        Raises:
            SagaNotFoundError: No saga has this id.
            InvalidOperatorActionError: The saga cannot move there (see
                :func:`~coordinator.core.migration.migrate_saga`).
            UnknownSagaVersionError: A version on the way is not loaded here.
            ValueError: ``actor`` or ``reason`` is blank.
        """
        actor, reason = actor.strip(), reason.strip()
        if not actor or not reason:
            raise ValueError("an operator action needs an actor and a reason")
        now = self._clock.now()
        async with self._store.engine.connect() as conn, conn.begin() as tx:
            found = await self._store.select_sagas_for_update(conn, [saga_id])
            before = found.get(saga_id)
            if before is None:
                raise SagaNotFoundError(f"no saga with id {saga_id!r}", saga_id=saga_id)
            transition = migrate_saga(
                self._registry, before, to_version, actor=actor, reason=reason, now=now
            )
            await persist(self._store, conn, self._topics, [transition.instance], [transition], now)
            await VersionStore().update_definition_version(conn, saga_id, to_version)
            if dry_run:
                await tx.rollback()
        return MigrationResult(
            saga_id=saga_id,
            from_version=before.definition_version,
            to_version=to_version,
            status=before.status,
            current_step=before.current_step,
            data_before=before.data,
            data_after=transition.instance.data,
            upcasters=tuple(transition.history[0].detail["upcasters"]),
            dry_run=dry_run,
        )

    async def list_parked(self, limit: int = 50) -> builtins.list[ParkedSaga]:
        """Parked sagas (replies kept for a coordinator that has their definition version),
        longest parked first.

        Raises:
            ValueError: ``limit`` is not in 1..1000.
        """
        if not 1 <= limit <= _MAX_LIST:
            raise ValueError(f"limit must be between 1 and {_MAX_LIST}, got {limit}")
        async with self._store.engine.connect() as conn:
            return await ParkingStore().select_parked_sagas(conn, limit=limit)

    async def retry(
        self, saga_id: str, *, actor: str, reason: str, dry_run: bool = False
    ) -> ActionResult:
        """Re-send what the saga awaits; a FAILED saga resumes its compensation.

        A FAILED saga's compensation is sent under a new command id (a new epoch), because
        the participant recorded its refusal under the old one; an active saga's awaited
        command is re-sent under its own id, with the next attempt number.

        Raises:
            SagaNotFoundError: No saga has this id.
            InvalidOperatorActionError: The saga is COMPLETED or COMPENSATED.
            ValueError: ``actor`` or ``reason`` is blank.
        """
        return await self._act(saga_id, "retry", actor, reason, dry_run)

    async def abort(
        self, saga_id: str, *, actor: str, reason: str, dry_run: bool = False
    ) -> ActionResult:
        """Stop a RUNNING saga and compensate what it did.

        Every command in flight (several inside a parallel group) is undone or fenced first,
        naming the command, so it cannot take effect later; a child saga still running is
        awaited, then undone if it completed; timers and signal waits are dropped. Aborting a
        COMPENSATING saga is recorded and changes nothing.

        Raises:
            SagaNotFoundError: No saga has this id.
            InvalidOperatorActionError: The saga is COMPLETED, COMPENSATED or FAILED.
            ValueError: ``actor`` or ``reason`` is blank.
        """
        return await self._act(saga_id, "abort", actor, reason, dry_run)

    async def _act(
        self, saga_id: str, action: str, actor: str, reason: str, dry_run: bool
    ) -> ActionResult:
        actor, reason = actor.strip(), reason.strip()
        if not actor:
            raise ValueError("an operator action needs an actor")
        if not reason:
            raise ValueError("an operator action needs a reason")
        event = OperatorRetry(actor, reason) if action == "retry" else OperatorAbort(actor, reason)
        now = self._clock.now()
        async with self._store.engine.connect() as conn, conn.begin() as tx:
            found = await self._store.select_sagas_for_update(conn, [saga_id])
            before = found.get(saga_id)
            if before is None:
                raise SagaNotFoundError(f"no saga with id {saga_id!r}", saga_id=saga_id)
            try:
                # The saga's own version, never the newest.
                definition = self._registry.get(before.saga_type, before.definition_version)
            except UnknownSagaVersionError as exc:
                raise UnknownSagaVersionError(
                    f"cannot {action} saga {saga_id!r}: {exc}; run the action where that "
                    "version is loaded (SAGA_REGISTRY)",
                    saga_id=saga_id,
                ) from exc
            try:
                transition = apply(definition, before, event, now)
            except InvalidOperatorActionError as exc:
                raise InvalidOperatorActionError(
                    f"cannot {action} saga {saga_id!r}: it is {before.status.value}; "
                    f"{action} applies to {_APPLIES_TO[action]}",
                    saga_id=saga_id,
                    step=before.current_step,
                ) from exc
            # Written even in a dry run: the version check and the outbox insert are part of
            # what is rehearsed; the rollback below discards them.
            outbox_ids = await persist(
                self._store,
                conn,
                self._topics,
                [transition.instance] if transition.changed else [],
                [transition],
                now,
                registry=self._registry,
            )
            if dry_run:
                await tx.rollback()
        if outbox_ids and not dry_run and self._on_commit is not None:
            self._on_commit()
        after = transition.instance
        commands = []
        for command in transition.commands:
            message = command_message(self._topics, after, command, now)
            commands.append(
                SentCommand(
                    topic=message.topic,
                    key=message.key.decode(),
                    message_type=command.message_type,
                    step=command.step,
                    command_id=command.command_id,
                    attempt=command.attempt,
                )
            )
        return ActionResult(
            saga_id=saga_id,
            action=action,
            actor=actor,
            reason=reason,
            dry_run=dry_run,
            changed=transition.changed,
            status_before=before.status,
            status_after=after.status,
            epoch=after.epoch,
            commands=tuple(commands),
            events=tuple(e.kind.value for e in transition.events),
            outbox_ids=() if dry_run else tuple(outbox_ids),
        )
