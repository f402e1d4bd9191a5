"""Which failures are transient: worth retrying as they are, never a reason to dead-letter."""

from __future__ import annotations

from aiokafka.errors import KafkaError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from coordinator.core.errors import SagaConflictError

__all__ = ["is_transient"]


def is_transient(exc: BaseException) -> bool:
    """True for failures worth retrying as they are: lost connections, lock conflicts."""
    if isinstance(exc, SagaConflictError | OperationalError | InterfaceError | OSError):
        return True
    if isinstance(exc, KafkaError) and getattr(exc, "retriable", False):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, TimeoutError)
