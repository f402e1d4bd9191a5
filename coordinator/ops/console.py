"""The console's view of a coordinator: saga pages, actions and dead letters in one place.

:class:`ConsoleService` is what ``coordinator.app`` hands the web console (it fits
``coordinator.api.ui.backend.ConsoleBackend``): listing through
:class:`~coordinator.store.saga_queries.SagaQueries`, actions through
:class:`~coordinator.ops.actions.OperatorActions`, dead letters through
:class:`~coordinator.ops.dead_letter_admin.DeadLetterAdmin`.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from coordinator.core.definition import SagaRegistry
from coordinator.core.state import SagaInstance, SagaStatus
from coordinator.ops.actions import ActionResult, OperatorActions, SagaTimeline
from coordinator.ops.dead_letter_admin import (
    DeadLetterAdmin,
    DeadLetterFilter,
    ReplayReport,
    StoredDeadLetter,
)
from coordinator.store.saga_queries import DataHorizon, SagaFilter, SagaQueries
from coordinator.store.saga_store import SagaStore

__all__ = ["ConsoleService", "DeadLetterListing", "SagaListing"]


@dataclass(frozen=True)
class SagaListing:
    """One page of sagas with the counts per status of everything the filter matches."""

    items: Sequence[SagaInstance]
    counts: dict[SagaStatus, int]
    horizon: DataHorizon
    retention_s: float | None


@dataclass(frozen=True)
class DeadLetterListing:
    """Dead letters, the positions of those replayed before, and counts by topic and reason."""

    letters: Sequence[StoredDeadLetter]
    replayed: set[tuple[str, int, int]]
    counts: dict[tuple[str, str], int]


class ConsoleService:
    """Reads and actions behind the console's pages.

    Args:
        retention_s: How long finished sagas are kept (shown with the list); None: forever.
    """

    def __init__(
        self,
        store: SagaStore,
        registry: SagaRegistry,
        operator: OperatorActions,
        dead_letters: DeadLetterAdmin,
        *,
        retention_s: float | None,
    ) -> None:
        self._store = store
        self._registry = registry
        self._operator = operator
        self._admin = dead_letters
        self._queries = SagaQueries()
        self._retention_s = retention_s

    def saga_types(self) -> Collection[str]:
        return self._registry.names()

    async def list_sagas(self, f: SagaFilter, *, limit: int, offset: int) -> SagaListing:
        # Three statements on three connections at once: a page costs the slowest of them,
        # not their sum (they need no common snapshot: the counts are a summary).
        async def page() -> list[SagaInstance]:
            async with self._store.engine.connect() as conn:
                return await self._queries.select_sagas(conn, f, limit=limit, offset=offset)

        async def counts() -> dict[SagaStatus, int]:
            async with self._store.engine.connect() as conn:
                return await self._queries.count_by_status(conn, f)

        async def horizon() -> DataHorizon:
            async with self._store.engine.connect() as conn:
                return await self._queries.select_horizon(conn)

        items, counted, since = await asyncio.gather(page(), counts(), horizon())
        return SagaListing(items, counted, since, self._retention_s)

    async def show(self, saga_id: str) -> SagaTimeline:
        return await self._operator.show(saga_id)

    async def retry(self, saga_id: str, *, actor: str, reason: str, dry_run: bool) -> ActionResult:
        return await self._operator.retry(saga_id, actor=actor, reason=reason, dry_run=dry_run)

    async def abort(self, saga_id: str, *, actor: str, reason: str, dry_run: bool) -> ActionResult:
        return await self._operator.abort(saga_id, actor=actor, reason=reason, dry_run=dry_run)

    async def dead_letters(self, *, topic: str | None, reason: str | None) -> DeadLetterListing:
        every = await self._admin.list()
        counts = Counter((letter.dlq_topic, letter.reason or "?") for letter in every)
        shown = [
            letter
            for letter in every
            if (topic is None or letter.dlq_topic == topic)
            and (reason is None or (letter.reason or "?") == reason)
        ]
        replayed = await self._admin.replayed(shown)
        return DeadLetterListing(shown, replayed, dict(counts))

    async def dead_letter(
        self, dlq_topic: str, partition: int, offset: int
    ) -> tuple[StoredDeadLetter, bool]:
        letter = await self._admin.show(dlq_topic, partition, offset)
        return letter, bool(await self._admin.replayed([letter]))

    async def replay(
        self, positions: Collection[tuple[str, int, int]], *, actor: str, dry_run: bool
    ) -> ReplayReport:
        if not positions:
            return ReplayReport(dry_run=dry_run)
        chosen = DeadLetterFilter(positions=frozenset(positions))
        return await self._admin.replay(chosen, dry_run=dry_run, actor=actor)
