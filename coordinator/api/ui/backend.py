"""What the console needs from a coordinator: the :class:`ConsoleBackend` protocol.

A running coordinator passes :class:`coordinator.ops.console.ConsoleService`; it answers
from the saga store, the operator actions and the dead-letter admin.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

from coordinator.ops.actions import ActionResult, SagaTimeline
from coordinator.ops.console import DeadLetterListing, SagaListing
from coordinator.ops.dead_letter_admin import ReplayReport, StoredDeadLetter
from coordinator.store.saga_queries import SagaFilter

__all__ = ["ConsoleBackend"]


class ConsoleBackend(Protocol):
    """What the console's pages read and do."""

    def saga_types(self) -> Collection[str]:
        """The names of the registered saga definitions."""
        ...

    async def list_sagas(self, f: SagaFilter, *, limit: int, offset: int) -> SagaListing:
        """A page of the sagas matching ``f``, newest first, with counts per status."""
        ...

    async def show(self, saga_id: str) -> SagaTimeline:
        """The saga and its history.

        Raises:
            SagaNotFoundError: No saga has this id.
        """
        ...

    async def retry(self, saga_id: str, *, actor: str, reason: str, dry_run: bool) -> ActionResult:
        """Retry the saga (see :meth:`coordinator.ops.actions.OperatorActions.retry`)."""
        ...

    async def abort(self, saga_id: str, *, actor: str, reason: str, dry_run: bool) -> ActionResult:
        """Abort the saga (see :meth:`coordinator.ops.actions.OperatorActions.abort`)."""
        ...

    async def dead_letters(self, *, topic: str | None, reason: str | None) -> DeadLetterListing:
        """The dead letters (of one topic and/or reason), with counts over all of them."""
        ...

    async def dead_letter(
        self, dlq_topic: str, partition: int, offset: int
    ) -> tuple[StoredDeadLetter, bool]:
        """One dead letter and whether it was replayed.

        Raises:
            DeadLetterNotFoundError: No such dead letter.
        """
        ...

    async def replay(
        self, positions: Collection[tuple[str, int, int]], *, actor: str, dry_run: bool
    ) -> ReplayReport:
        """Replay the dead letters at these positions (each at most once)."""
        ...
