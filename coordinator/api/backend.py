"""What the HTTP API needs from a coordinator: the :class:`SagaBackend` protocol.

A running coordinator is adapted by ``coordinator.app.CoordinatorBackend`` (the composition
root, one layer up); unit tests pass an in-memory fake.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from coordinator.core.state import SagaInstance, SagaStatus
from coordinator.ops.actions import ActionResult, SagaTimeline
from coordinator.ops.signals import SentSignal

__all__ = ["Readiness", "SagaBackend"]


@dataclass(frozen=True)
class Readiness:
    """The result of a readiness probe.

    Attributes:
        checks: Each check's name and whether it passed; ready when all did.
        partitions: Reply/request partitions this instance owns now (information only: an
            instance without partitions still serves the API).
        details: Why a check failed, by check name.
    """

    checks: Mapping[str, bool]
    partitions: int | None = None
    details: Mapping[str, str] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        """True when every check passed."""
        return all(self.checks.values())


class SagaBackend(Protocol):
    """What the HTTP API needs from a coordinator."""

    def saga_types(self) -> Collection[str]:
        """The names of the registered saga definitions."""
        ...

    async def start_saga(
        self,
        saga_type: str,
        data: Mapping[str, Any],
        *,
        saga_id: str | None,
        traceparent: str | None,
    ) -> str:
        """Start a saga (once per saga id) and return its id.

        Raises:
            UnknownSagaTypeError: No definition has this name.
            InvalidSagaDataError: ``data`` does not fit the definition's data model (the
                pydantic ``ValidationError`` is its ``__cause__``).
        """
        ...

    async def show(self, saga_id: str) -> SagaTimeline:
        """The saga and its history.

        Raises:
            SagaNotFoundError: No saga has this id.
        """
        ...

    async def list_sagas(
        self,
        *,
        status: SagaStatus | None,
        saga_type: str | None,
        limit: int,
        offset: int,
        business_key: str | None = None,
    ) -> Sequence[SagaInstance]:
        """Sagas newest first, optionally of one status and/or type, or with a business key
        (``name=value``)."""
        ...

    async def retry(self, saga_id: str, *, actor: str, reason: str, dry_run: bool) -> ActionResult:
        """Retry what the saga awaits (see :meth:`coordinator.ops.actions.OperatorActions.retry`).

        Raises:
            SagaNotFoundError: No saga has this id.
            InvalidOperatorActionError: The action does not apply to the saga's status.
        """
        ...

    async def abort(self, saga_id: str, *, actor: str, reason: str, dry_run: bool) -> ActionResult:
        """Abort the saga (see :meth:`coordinator.ops.actions.OperatorActions.abort`).

        Raises:
            SagaNotFoundError: No saga has this id.
            InvalidOperatorActionError: The action does not apply to the saga's status.
        """
        ...

    async def send_signal(
        self,
        saga_id: str,
        name: str,
        payload: Mapping[str, Any],
        *,
        message_id: str | None,
        traceparent: str | None,
    ) -> SentSignal:
        """Publish signal ``name`` for the saga to ``saga.signals`` (see
        :class:`coordinator.ops.signals.SignalSender`).

        Raises:
            SagaNotFoundError: No saga has this id.
        """
        ...

    async def readiness(self) -> Readiness:
        """Whether this instance can serve: database reachable, consumer running."""
        ...
