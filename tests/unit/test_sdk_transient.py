"""The SDK's classification of transient failures (no I/O: errors built by hand)."""

from __future__ import annotations

import asyncpg
import pytest
from aiokafka.errors import (
    InvalidProducerIdMapping,
    KafkaConnectionError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    UnknownProducerId,
)
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from service_sdk.transient import (
    error_chain,
    is_transient,
    is_transient_database_error,
    needs_new_producer,
)


def _wrapped(orig: BaseException) -> DBAPIError:
    """How SQLAlchemy hands an asyncpg error to the caller."""
    return DBAPIError.instance("SELECT 1", {}, orig, Exception)


def _raised_from(cause: BaseException) -> RuntimeError:
    try:
        raise RuntimeError("in a handler") from cause
    except RuntimeError as exc:
        return exc


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(_wrapped(asyncpg.CannotConnectNowError("starting up")), id="starting-up"),
        pytest.param(asyncpg.CannotConnectNowError("starting up"), id="starting-up-raw"),
        pytest.param(_wrapped(asyncpg.AdminShutdownError("terminating")), id="admin-shutdown"),
        pytest.param(_wrapped(asyncpg.SerializationError("conflict")), id="serialization"),
        pytest.param(_wrapped(asyncpg.DeadlockDetectedError("deadlock")), id="deadlock"),
        pytest.param(
            _wrapped(
                asyncpg.InterfaceError("cannot perform operation: another operation is in progress")
            ),
            id="busy-connection",
        ),
        pytest.param(PoolTimeout("QueuePool limit reached"), id="pool-timeout"),
        pytest.param(_raised_from(_wrapped(asyncpg.CannotConnectNowError("x"))), id="as-a-cause"),
    ],
)
def test_a_database_that_is_away_is_a_transient_database_error(error: BaseException) -> None:
    assert is_transient(error)
    assert is_transient_database_error(error)
    assert not needs_new_producer(error)


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(ConnectionRefusedError(111, "gateway refused"), id="other-service-refused"),
        pytest.param(TimeoutError(), id="timeout"),
        pytest.param(KafkaConnectionError("no broker"), id="kafka-unreachable"),
        pytest.param(OutOfOrderSequenceNumber(), id="producer-state-lost"),
    ],
)
def test_other_transient_failures_are_not_the_databases(error: BaseException) -> None:
    assert is_transient(error)
    assert not is_transient_database_error(error)


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(ValueError("bad"), id="value-error"),
        pytest.param(
            IntegrityError("INSERT", {}, asyncpg.UniqueViolationError("dup")), id="unique-violation"
        ),
        pytest.param(_wrapped(asyncpg.DataError("invalid input")), id="data-error"),
        pytest.param(MessageSizeTooLargeError(), id="record-too-large"),
    ],
)
def test_failures_about_the_message_are_not_transient(error: BaseException) -> None:
    assert not is_transient(error)
    assert not is_transient_database_error(error)


@pytest.mark.parametrize(
    "error",
    [OutOfOrderSequenceNumber(), UnknownProducerId(), ProducerFenced(), InvalidProducerIdMapping()],
    ids=lambda error: type(error).__name__,
)
def test_a_lost_idempotence_state_needs_a_new_producer(error: BaseException) -> None:
    assert needs_new_producer(error)
    assert needs_new_producer(_raised_from(error))
    assert is_transient(error)


def test_an_unreachable_broker_needs_no_new_producer() -> None:
    assert not needs_new_producer(KafkaConnectionError("no broker"))


def test_the_chain_is_bounded_and_cycle_safe() -> None:
    first, second = RuntimeError("a"), RuntimeError("b")
    first.__context__, second.__context__ = second, first
    assert list(error_chain(first)) == [first, second]
    deep: BaseException = ValueError("bottom")
    for _ in range(40):
        deep = _raised_from(deep)
    assert len(list(error_chain(deep))) == 16
