"""Topic naming of the wire contract."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Topics"]


@dataclass(frozen=True)
class Topics:
    """Names of the topics sagas use, with an optional prefix for multi-tenancy.

    Args:
        prefix: Prepended to every name, e.g. ``"tenant-a."``.
    """

    prefix: str = ""

    def commands(self, service: str) -> str:
        """The topic a participant service consumes its commands from."""
        return f"{self.prefix}{service}.commands"

    @property
    def replies(self) -> str:
        """The topic participants publish replies to, consumed by the coordinator."""
        return f"{self.prefix}saga.replies"

    @property
    def requests(self) -> str:
        """The topic of requests to start a saga."""
        return f"{self.prefix}saga.requests"

    @property
    def heartbeats(self) -> str:
        """The topic participants report liveness and the commands they work on to."""
        return f"{self.prefix}saga.heartbeats"

    @property
    def signals(self) -> str:
        """The topic of signals: named events from outside for one saga (keyed by saga id)."""
        return f"{self.prefix}saga.signals"

    @property
    def events(self) -> str:
        """The topic of saga lifecycle events."""
        return f"{self.prefix}saga.events"

    @staticmethod
    def dead_letters(topic: str) -> str:
        """The dead-letter topic of ``topic``."""
        return f"{topic}.dlq"
