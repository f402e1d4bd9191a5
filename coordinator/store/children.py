"""Child sagas in the write path: starting them, and telling the parent how they ended.

A child saga step is, to the engine, a command step whose "service" is the coordinator: the
engine emits a :class:`~coordinator.core.state.ChildStart` whose ``saga_id`` is the command id
the parent awaits. :func:`start_children` inserts those children in the transaction that
persists the parent's transition (the normal start path: ``start_saga`` and an insert that
does nothing for a saga id that exists). A start of a child that exists already is a
duplicate and changes nothing, except that a child which has *ended* gets its end notice sent
again (the parent may have started it again because it missed the first one).

:func:`end_notices` writes, for every transition that ends a saga with a parent, a normal
REPLY envelope to the replies topic, keyed by the parent's id: step = ``parent_step``,
command_id = the child's saga id, outcome SUCCESS (COMPLETED; payload = the child's final
data) or FAILURE (COMPENSATED or FAILED; error = the child's failure reason). The parent
applies it as an ordinary reply, with the inbox and every other rule of replies.

Children are started RUNNING whatever the admission caps: their parent is in flight already,
and queueing a child behind new sagas could leave every slot held by parents waiting for
children that never run.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.core.definition import SagaRegistry
from coordinator.core.errors import SagaError
from coordinator.core.machine import start_saga
from coordinator.core.state import (
    ChildStart,
    LifecycleKind,
    SagaInstance,
    SagaStatus,
    StartSaga,
    Transition,
)
from coordinator.store.records import OutboxMessage
from coordinator.store.saga_store import SagaStore, saga_from_row
from coordinator.store.schema import saga_instance
from service_sdk.contract import Envelope, MessageKind, Outcome, Topics

__all__ = [
    "MAX_CHILD_DEPTH",
    "ChildStore",
    "StartedChildren",
    "child_end_message",
    "end_notices",
    "start_children",
]

logger = logging.getLogger(__name__)

MAX_CHILD_DEPTH = 16
"""How many generations one transaction starts at most (a child whose first stage starts a
child, and so on); deeper is a definition that starts itself."""

_NOTICE_NAMESPACE = uuid.UUID("0b5d7c52-93a4-4d0e-8f3e-6a1f2c9d4b71")
_ENDINGS = frozenset({LifecycleKind.COMPLETED, LifecycleKind.COMPENSATED, LifecycleKind.FAILED})
_SOURCE = "saga-coordinator"


def _ids(name: str, values: Collection[str]) -> sa.BindParameter[Any]:
    value: Any = sorted(values)
    return sa.bindparam(name, value, type_=ARRAY(sa.Text))


class ChildStore:
    """The queries about parents and children."""

    async def select_sagas(
        self, conn: AsyncConnection, saga_ids: Collection[str]
    ) -> dict[str, SagaInstance]:
        """The sagas with these ids that exist (no lock)."""
        if not saga_ids:
            return {}
        stmt = sa.select(saga_instance).where(
            saga_instance.c.saga_id == sa.any_(_ids("saga_ids", saga_ids))
        )
        result = await conn.execute(stmt)
        return {row.saga_id: saga_from_row(row._mapping) for row in result}

    async def select_saga_types(
        self, conn: AsyncConnection, saga_ids: Collection[str]
    ) -> dict[str, str]:
        """``saga_id -> saga_type`` of the sagas with these ids that exist."""
        if not saga_ids:
            return {}
        stmt = sa.select(saga_instance.c.saga_id, saga_instance.c.saga_type).where(
            saga_instance.c.saga_id == sa.any_(_ids("saga_ids", saga_ids))
        )
        return {row.saga_id: row.saga_type for row in await conn.execute(stmt)}

    async def select_children(
        self, conn: AsyncConnection, parent_saga_id: str, *, limit: int = 200
    ) -> list[SagaInstance]:
        """The sagas ``parent_saga_id`` started, oldest first (``ix_saga_instance_parent_saga_id``)."""
        stmt = (
            sa.select(saga_instance)
            .where(saga_instance.c.parent_saga_id == parent_saga_id)
            .order_by(saga_instance.c.created_at, saga_instance.c.saga_id)
            .limit(limit)
        )
        result = await conn.execute(stmt)
        return [saga_from_row(row) for row in result.mappings()]


def _notice_id(child: SagaInstance, attempt: int) -> str:
    # Deterministic: a re-run of the same transaction (a retried batch) writes the same id,
    # and the parent's inbox drops the second copy.
    return str(
        uuid.uuid5(
            _NOTICE_NAMESPACE, f"{child.saga_id}/{child.status.value}/{child.epoch}/{attempt}"
        )
    )


def child_end_message(
    topics: Topics, child: SagaInstance, parent_type: str, attempt: int, now: datetime
) -> OutboxMessage:
    """The REPLY that tells ``child``'s parent how it ended (``child`` must be terminal)."""
    if child.parent_saga_id is None or child.parent_step is None:
        raise ValueError(f"saga {child.saga_id} has no parent to notify")
    success = child.status is SagaStatus.COMPLETED
    envelope = Envelope(
        message_id=_notice_id(child, attempt),
        kind=MessageKind.REPLY,
        message_type=f"{child.saga_type}.start",
        source=_SOURCE,
        saga_id=child.parent_saga_id,
        saga_type=parent_type,
        step=child.parent_step,
        attempt=attempt,
        command_id=child.saga_id,
        outcome=Outcome.SUCCESS if success else Outcome.FAILURE,
        error=None
        if success
        else (child.failure_reason or f"child saga {child.saga_id} {child.status.value}"),
        payload=dict(child.data) if success else {"status": child.status.value},
        occurred_at=now,
        traceparent=child.traceparent,
    )
    return OutboxMessage(
        saga_id=child.saga_id,
        topic=topics.replies,
        key=envelope.key(),
        value=envelope.to_bytes(),
        headers=envelope.headers(),
        message_id=envelope.message_id,
    )


def _refusal_message(
    topics: Topics, start: ChildStart, parent: SagaInstance, error: str, now: datetime
) -> OutboxMessage:
    """A FAILURE reply for a child that cannot be started (its data fails its model)."""
    envelope = Envelope(
        message_id=str(uuid.uuid5(_NOTICE_NAMESPACE, f"{start.saga_id}/refused/{start.attempt}")),
        kind=MessageKind.REPLY,
        message_type=f"{start.saga_type}.start",
        source=_SOURCE,
        saga_id=parent.saga_id,
        saga_type=parent.saga_type,
        step=start.parent_step,
        attempt=start.attempt,
        command_id=start.saga_id,
        outcome=Outcome.FAILURE,
        error=error,
        occurred_at=now,
        traceparent=parent.traceparent,
    )
    return OutboxMessage(
        saga_id=parent.saga_id,
        topic=topics.replies,
        key=envelope.key(),
        value=envelope.to_bytes(),
        headers=envelope.headers(),
        message_id=envelope.message_id,
    )


@dataclass
class StartedChildren:
    """What :func:`start_children` did.

    Attributes:
        transitions: The start transitions of the children inserted (grandchildren
            included), to persist like any other transition: history, commands, events.
        messages: Outbox rows: end notices re-sent for children that had ended, and
            failures for children that could not start.
    """

    transitions: list[Transition] = field(default_factory=list)
    messages: list[OutboxMessage] = field(default_factory=list)


async def start_children(
    store: SagaStore,
    conn: AsyncConnection,
    registry: SagaRegistry,
    topics: Topics,
    transitions: Sequence[Transition],
    now: datetime,
) -> StartedChildren:
    """Insert the children ``transitions`` start, in the caller's transaction.

    Raises:
        SagaError: Children start children more than :data:`MAX_CHILD_DEPTH` deep.
    """
    done = StartedChildren()
    wave = list(transitions)
    for _ in range(MAX_CHILD_DEPTH):
        starts = _child_starts(wave)
        if not starts:
            return done
        wave = await _start_wave(store, conn, registry, topics, starts, now, done)
        done.transitions.extend(wave)
    if _child_starts(wave):
        raise SagaError(f"child sagas nest deeper than {MAX_CHILD_DEPTH} levels")
    return done


def _child_starts(transitions: Iterable[Transition]) -> list[tuple[ChildStart, SagaInstance]]:
    """Each child start once (the first wins), with the parent's state that asked for it."""
    found: dict[str, tuple[ChildStart, SagaInstance]] = {}
    for transition in transitions:
        for start in transition.child_starts:
            found.setdefault(start.saga_id, (start, transition.instance))
    return list(found.values())


async def _start_wave(
    store: SagaStore,
    conn: AsyncConnection,
    registry: SagaRegistry,
    topics: Topics,
    starts: Sequence[tuple[ChildStart, SagaInstance]],
    now: datetime,
    done: StartedChildren,
) -> list[Transition]:
    decided: list[tuple[ChildStart, Transition]] = []
    for start, parent in starts:
        try:
            definition = registry.get(start.saga_type)
            transition = start_saga(
                definition,
                start.saga_id,
                StartSaga(
                    _start_message_id(start),
                    dict(start.data),
                    # The child is part of its parent's trace.
                    traceparent=parent.traceparent,
                    parent_saga_id=start.parent_saga_id,
                    parent_step=start.parent_step,
                ),
                now,
            )
        except SagaError as exc:
            # The parent's step fails like a refused command: the parent compensates.
            logger.warning(
                "child saga %s (%s) of %s cannot start: %s",
                start.saga_id,
                start.saga_type,
                parent.saga_id,
                exc,
                extra={"saga_id": parent.saga_id, "step": start.parent_step},
            )
            reason = f"child saga {start.saga_type!r} cannot start: {exc}"
            done.messages.append(_refusal_message(topics, start, parent, reason, now))
            continue
        decided.append((start, transition))
    if not decided:
        return []
    inserted = await store.insert_sagas(conn, [t.instance for _, t in decided])
    existing = {s.saga_id: s for s, _ in decided if s.saga_id not in inserted}
    if existing:
        await _resend_ended(conn, topics, existing, now, done)
    return [t for s, t in decided if s.saga_id in inserted]


def _start_message_id(start: ChildStart) -> str:
    return str(uuid.uuid5(_NOTICE_NAMESPACE, f"{start.saga_id}/start"))


async def _resend_ended(
    conn: AsyncConnection,
    topics: Topics,
    repeats: dict[str, ChildStart],
    now: datetime,
    done: StartedChildren,
) -> None:
    """A start of a child that exists: nothing, or its end notice again if it has ended."""
    children = ChildStore()
    found = await children.select_sagas(conn, repeats)
    ended = [c for c in found.values() if c.is_terminal and c.parent_saga_id is not None]
    parents = await children.select_saga_types(conn, {c.parent_saga_id or "" for c in ended})
    for child in ended:
        parent_type = parents.get(child.parent_saga_id or "")
        if parent_type is not None:
            attempt = repeats[child.saga_id].attempt
            done.messages.append(child_end_message(topics, child, parent_type, attempt, now))


def _ends(transition: Transition) -> bool:
    """True when ``transition`` ends its saga (its terminal lifecycle event is in it)."""
    return any(event.kind in _ENDINGS for event in transition.events)


async def end_notices(
    conn: AsyncConnection, topics: Topics, transitions: Sequence[Transition], now: datetime
) -> list[OutboxMessage]:
    """The end notices of the transitions that end a child saga (none: no query)."""
    endings = [
        t.instance for t in transitions if t.instance.parent_saga_id is not None and _ends(t)
    ]
    if not endings:
        return []
    parents = await ChildStore().select_saga_types(
        conn, {child.parent_saga_id or "" for child in endings}
    )
    messages: list[OutboxMessage] = []
    for child in endings:
        parent_type = parents.get(child.parent_saga_id or "")
        if parent_type is None:
            # Deleted by retention (or by hand): nobody is left to tell.
            logger.warning(
                "child saga %s ended, but its parent %s is gone",
                child.saga_id,
                child.parent_saga_id,
                extra={"saga_id": child.saga_id},
            )
            continue
        # Attempt 1: the first start created the child; a reply is matched when its attempt
        # is not newer than the parent's last send, whatever re-sends happened since.
        messages.append(child_end_message(topics, child, parent_type, 1, now))
    return messages
