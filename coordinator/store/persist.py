"""The one write path of saga state: saga rows, their history and their outgoing messages.

The batch processor, the deadline scanner and operator actions all end a decision here, inside
the transaction they opened, so state, history and outbox change together or not at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.core.state import HistoryEntry, SagaInstance, Transition
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
) -> list[int]:
    """Write changed sagas, their history and outgoing messages; returns the outbox ids.

    ``updated`` holds the final state of each changed saga (carrying the version it was read
    with); ``transitions`` every transition in order, for history and messages.
    """
    history: list[tuple[str, HistoryEntry]] = []
    outbox: list[OutboxMessage] = []
    for transition in transitions:
        instance = transition.instance
        history.extend((instance.saga_id, entry) for entry in transition.history)
        outbox.extend(command_message(topics, instance, c, now) for c in transition.commands)
        outbox.extend(event_message(topics, instance, e, now) for e in transition.events)
    if updated:
        await store.update_sagas(conn, updated)
    if history:
        await store.insert_history(conn, history, now)
    return await store.insert_outbox(conn, outbox, now) if outbox else []
