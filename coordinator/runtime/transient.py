"""Which failures are transient: worth waiting out and retrying, never a reason to dead-letter.

One classification for every loop (reply consumer, outbox relay, deadline scanner, admission,
heartbeats, housekeeping) and the HTTP API's 503: a failure is transient when it is about
reaching the database or Kafka, not about the message being processed.

The classification of PostgreSQL and Kafka errors is the participant SDK's
(:mod:`service_sdk.transient`: SQLSTATEs, connection state, retriable Kafka errors, a producer
whose idempotence state the broker lost), so participants and coordinator agree on it. The
coordinator adds one failure of its own: a :class:`~coordinator.core.errors.SagaConflictError`
(another instance changed the saga meanwhile) is retried on fresh state.
"""

from __future__ import annotations

from coordinator.core.errors import SagaConflictError
from service_sdk import transient as _sdk
from service_sdk.transient import needs_new_producer

__all__ = ["is_transient", "needs_new_producer"]


def is_transient(exc: BaseException) -> bool:
    """True for failures worth retrying as they are (after a new producer, if it needs one)."""
    if any(isinstance(node, SagaConflictError) for node in _sdk.error_chain(exc)):
        return True
    return _sdk.is_transient(exc)
