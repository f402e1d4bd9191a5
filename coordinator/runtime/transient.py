"""Which failures are transient: worth waiting out and retrying, never a reason to dead-letter.

One classification for every loop (reply consumer, outbox relay, deadline scanner, admission,
heartbeats, housekeeping) and the HTTP API's 503: a failure is transient when it is about
reaching the database or Kafka, not about the message being processed.

PostgreSQL errors are told apart by SQLSTATE, wherever SQLAlchemy and asyncpg put it in the
exception chain:

* class ``08`` connection exceptions, ``57P01``-``57P03`` admin/crash shutdown and "the
  database system is starting up" (a restarting server), ``53300`` too many connections;
* ``40001`` serialization failure, ``40P01`` deadlock, ``55P03`` lock not available.

Kafka errors are transient when aiokafka marks them retriable (leader moves, timeouts,
unreachable brokers), and when the idempotent producer lost its state on the broker
(``OutOfOrderSequenceNumber``, ``UnknownProducerId``, fenced): those need a new producer, see
:func:`needs_new_producer`, and then the same send goes through.
"""

from __future__ import annotations

from collections.abc import Iterator

from aiokafka.errors import (
    InvalidProducerIdMapping,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    UnknownProducerId,
)
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from coordinator.core.errors import SagaConflictError

__all__ = ["is_transient", "needs_new_producer"]

_TRANSIENT_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300", "40001", "40P01", "55P03"})
_TRANSIENT_SQLSTATE_CLASSES = frozenset({"08"})
_PRODUCER_STATE_LOST = (
    OutOfOrderSequenceNumber,
    UnknownProducerId,
    ProducerFenced,
    InvalidProducerIdMapping,
)
# asyncpg's connection refuses a second query while one is pending, e.g. on a connection that
# a cancelled or failed operation left behind: a new connection succeeds.
_CONNECTION_STATE_MESSAGES = ("another operation is in progress", "connection was closed")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, the DBAPI error SQLAlchemy wraps, and their causes (bounded, cycle-safe)."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending and len(seen) < 16:
        node = pending.pop(0)
        if id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        for linked in (getattr(node, "orig", None), node.__cause__, node.__context__):
            if isinstance(linked, BaseException):
                pending.append(linked)


def _sqlstate(exc: BaseException) -> str | None:
    value = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    return value if isinstance(value, str) else None


def needs_new_producer(exc: BaseException) -> bool:
    """True when the idempotent producer's state is gone: close it and start a new one."""
    return any(isinstance(node, _PRODUCER_STATE_LOST) for node in _chain(exc))


def is_transient(exc: BaseException) -> bool:
    """True for failures worth retrying as they are (after a new producer, if it needs one)."""
    for node in _chain(exc):
        if isinstance(node, SagaConflictError | OSError | TimeoutError | PoolTimeout):
            return True
        if isinstance(node, OperationalError | InterfaceError):
            return True
        if isinstance(node, DBAPIError) and node.connection_invalidated:
            return True
        state = _sqlstate(node)
        if state is not None and (
            state in _TRANSIENT_SQLSTATES or state[:2] in _TRANSIENT_SQLSTATE_CLASSES
        ):
            return True
        if isinstance(node, (KafkaConnectionError, KafkaTimeoutError, *_PRODUCER_STATE_LOST)):
            return True
        if isinstance(node, KafkaError) and getattr(node, "retriable", False):
            return True
        if any(text in str(node) for text in _CONNECTION_STATE_MESSAGES):
            return True
    return False
