"""The one write path of saga state: saga rows, their history and their outgoing messages.

The batch processor, the deadline scanner and operator actions all end a decision here, inside
the transaction they opened, so state, history and outbox change together or not at all. The
child sagas a transition starts are inserted here too, and a child's end is announced to its
parent here (:mod:`coordinator.store.children`), so neither can be forgotten by a caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.core.definition import SagaRegistry
from coordinator.core.errors import SagaError
from coordinator.core.state import HistoryEntry, SagaInstance, Transition
from coordinator.store.children import end_notices, start_children
from coordinator.store.messages import command_message, event_message
from coordinator.store.records import OutboxMessage
from coordinator.store.saga_store import SagaStore
from service_sdk.contract import Topics

__all__ = ["persist"]


async def persist(
    store: SagaStore,
    conn: AsyncConnection,
    topics: Topics,
    updated: Sequence[SagaInstance],
    transitions: Sequence[Transition],
    now: datetime,
    *,
    registry: SagaRegistry | None = None,
) -> list[int]:
    """Write changed sagas, their history and outgoing messages; returns the outbox ids.

    ``updated`` holds the final state of each changed saga (carrying the version it was read
    with); ``transitions`` every transition in order, for history and messages. The child
    sagas they start are inserted (their definitions come from ``registry``), and the end of
    a saga with a parent writes the parent's reply.

    Raises:
        SagaError: A transition starts a child saga and no ``registry`` was given.
    """
    history: list[tuple[str, HistoryEntry]] = []
    outbox: list[OutboxMessage] = []
    if any(t.child_starts for t in transitions):
        if registry is None:
            raise SagaError("persisting a transition that starts a child saga needs the registry")
        # The parents are saved first: a child is inserted only for a parent still as read.
        await store.update_sagas(conn, updated)
        updated = ()
        children = await start_children(store, conn, registry, topics, transitions, now)
        transitions = [*transitions, *children.transitions]
        outbox.extend(children.messages)
    for transition in transitions:
        instance = transition.instance
        history.extend((instance.saga_id, entry) for entry in transition.history)
        outbox.extend(command_message(topics, instance, c, now) for c in transition.commands)
        outbox.extend(
            event_message(topics, instance, e, now)
            for e in transition.events
            if store.lifecycle_events.includes(e.kind)
        )
    outbox.extend(await end_notices(conn, topics, transitions, now))
    return await store.write_changes(conn, updated, history, outbox, now)
