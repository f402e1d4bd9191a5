"""Which failures are transient: worth waiting out and retrying, never a reason to dead-letter.

A failure is transient when it is about reaching PostgreSQL or Kafka, not about the message
being processed. The participant runner and the coordinator classify with these functions
(the coordinator adds its own optimistic-concurrency conflict); they take any exception and
look through its chain (``__cause__``, ``__context__`` and the DBAPI error SQLAlchemy wraps as
``orig``), so a failure wrapped by a handler or a library is still recognised.

PostgreSQL errors are told apart by SQLSTATE:

* class ``08`` connection exceptions, ``57P01``-``57P03`` admin/crash shutdown and "the
  database system is starting up" (a restarting server), ``53300`` too many connections;
* ``40001`` serialization failure, ``40P01`` deadlock, ``55P03`` lock not available;

and by the state of the connection: SQLAlchemy's operational and interface errors, an
invalidated connection, a pool timeout, and asyncpg's "another operation is in progress"
(a connection that a failed or cancelled operation left busy: a new connection succeeds).

Kafka errors are transient when aiokafka marks them retriable (leader moves, timeouts,
unreachable brokers), and when the idempotent producer lost its state on the broker
(``OutOfOrderSequenceNumber``, ``UnknownProducerId``, ``ProducerFenced``,
``InvalidProducerIdMapping``, typically after a long broker outage): those need a new
producer (:func:`needs_new_producer`), and then the same send goes through. The opposite: a
record Kafka refuses for good (too large, invalid topic; :func:`is_unsendable`) never goes
through, however often it is sent.

Example::

    try:
        await publish()
    except Exception as exc:
        if needs_new_producer(exc):
            await renew_producer()
        if not is_transient(exc):
            raise
"""

from __future__ import annotations

from collections.abc import Iterator

from aiokafka.errors import (
    InvalidProducerIdMapping,
    InvalidTopicError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    RecordListTooLargeError,
    RecordTooLargeError,
    UnknownProducerId,
)
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout

__all__ = [
    "NEVER_SENDABLE",
    "PRODUCER_STATE_LOST",
    "error_chain",
    "is_transient",
    "is_transient_database_error",
    "is_unsendable",
    "needs_new_producer",
]

PRODUCER_STATE_LOST: tuple[type[KafkaError], ...] = (
    OutOfOrderSequenceNumber,
    UnknownProducerId,
    ProducerFenced,
    InvalidProducerIdMapping,
)
"""The errors of an idempotent producer whose state the broker no longer has: fatal for that
producer (every later send fails the same way), harmless for a new one."""

NEVER_SENDABLE: tuple[type[KafkaError], ...] = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    RecordListTooLargeError,
    InvalidTopicError,
)
"""Kafka's refusals of one record for good (larger than the producer's ``max_request_size``
or the broker's ``message.max.bytes``, or an invalid topic): no retry can ever send it."""

_TRANSIENT_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300", "40001", "40P01", "55P03"})
_TRANSIENT_SQLSTATE_CLASSES = frozenset({"08"})
_CONNECTION_STATE_MESSAGES = ("another operation is in progress", "connection was closed")
_CHAIN_LIMIT = 16


def error_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, the DBAPI error SQLAlchemy wraps (``orig``), and their causes and contexts.

    Breadth first, each exception once, at most 16 of them (chains can be cyclic).
    """
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending and len(seen) < _CHAIN_LIMIT:
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


def _is_transient_node(node: BaseException) -> bool:
    if isinstance(node, OSError | TimeoutError | PoolTimeout | OperationalError | InterfaceError):
        return True
    if isinstance(node, DBAPIError) and node.connection_invalidated:
        return True
    state = _sqlstate(node)
    if state is not None and (
        state in _TRANSIENT_SQLSTATES or state[:2] in _TRANSIENT_SQLSTATE_CLASSES
    ):
        return True
    if isinstance(node, (KafkaConnectionError, KafkaTimeoutError, *PRODUCER_STATE_LOST)):
        return True
    if isinstance(node, KafkaError) and getattr(node, "retriable", False):
        return True
    return any(text in str(node) for text in _CONNECTION_STATE_MESSAGES)


def _is_database_node(node: BaseException) -> bool:
    # asyncpg is matched by module rather than imported: a handler may use the driver directly.
    return (
        isinstance(node, SQLAlchemyError)
        or _sqlstate(node) is not None
        or type(node).__module__.partition(".")[0] == "asyncpg"
    )


def is_transient(exc: BaseException) -> bool:
    """True for failures worth retrying as they are (after a new producer, if one is needed).

    Args:
        exc: Any exception; its whole chain is looked at.

    Returns:
        True when some exception of the chain is about reaching PostgreSQL or Kafka.
    """
    return any(_is_transient_node(node) for node in error_chain(exc))


def is_transient_database_error(exc: BaseException) -> bool:
    """True for a transient failure that came from PostgreSQL (its driver or SQLAlchemy).

    The runner waits such a failure out without counting it as a handler attempt: a command
    is never dead-lettered because its database was restarting. A transient error of another
    origin raised by a handler (say, a payment gateway that refused the connection) is the
    handler's failure, retried and then dead-lettered as usual.

    Args:
        exc: Any exception; its whole chain is looked at.
    """
    return any(_is_database_node(node) and _is_transient_node(node) for node in error_chain(exc))


def needs_new_producer(exc: BaseException) -> bool:
    """True when the idempotent producer's state is gone: close it and start a new one.

    Args:
        exc: Any exception; its whole chain is looked at.
    """
    return any(isinstance(node, PRODUCER_STATE_LOST) for node in error_chain(exc))


def is_unsendable(exc: BaseException) -> bool:
    """True when Kafka will never take the record that failed (:data:`NEVER_SENDABLE`): set it
    aside (dead-letter it) instead of retrying, or it holds up everything behind it.

    Args:
        exc: Any exception; its whole chain is looked at.
    """
    return any(isinstance(node, NEVER_SENDABLE) for node in error_chain(exc))
