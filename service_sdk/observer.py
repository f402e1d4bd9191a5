"""The runner's metric hooks: what a :class:`~service_sdk.ServiceRunner` reports as it works.

:class:`~service_sdk.metrics.ServiceMetrics` implements them with Prometheus; tests pass a
recording one.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["NoObserver", "RunnerObserver"]


class RunnerObserver(Protocol):
    """Hooks for metrics; every method must return quickly and never raise."""

    def command_processed(self, message_type: str, result: str, duration_s: float) -> None:
        """A command was answered or recognised.

        Args:
            message_type: The command's type.
            result: ``success``, ``failure``, ``retryable``, ``deferred``, ``duplicate``
                (answered from the record), ``pending`` (a deferred command re-delivered),
                ``fenced`` (a command refused by its tombstone), ``tombstoned`` (an undo
                answered ``fenced: true`` without a handler run) or ``unfenceable`` (a fence
                whose command had already taken effect).
            duration_s: Wall time of the database transaction, handler included.
        """

    def handler_failed(self, message_type: str, attempt: int) -> None:
        """A handler raised an unexpected error on ``attempt`` (it is retried or dead-lettered)."""

    def dead_lettered(self, topic: str, reason: str) -> None:
        """A record of ``topic`` was sent to its dead-letter topic for ``reason``."""


class NoObserver:
    """The observer of a runner given none: it ignores everything."""

    def command_processed(self, message_type: str, result: str, duration_s: float) -> None:
        pass

    def handler_failed(self, message_type: str, attempt: int) -> None:
        pass

    def dead_lettered(self, topic: str, reason: str) -> None:
        pass
