"""One classification of transient failures for every loop (no I/O: errors built by hand)."""

from __future__ import annotations

import asyncpg
import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    OutOfOrderSequenceNumber,
    UnknownProducerId,
)
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import DBAPIError, IntegrityError

from coordinator.core.errors import InvalidSagaDataError, SagaConflictError
from coordinator.runtime.transient import is_transient, needs_new_producer


def _wrapped(orig: BaseException) -> DBAPIError:
    """How SQLAlchemy hands an asyncpg error to the caller."""
    return DBAPIError.instance("SELECT 1", {}, orig, Exception)


def _raised_from(cause: BaseException) -> RuntimeError:
    try:
        raise RuntimeError("while applying a batch") from cause
    except RuntimeError as exc:
        return exc


class _Model(BaseModel):
    n: int


def _validation_error() -> ValidationError:
    try:
        _Model.model_validate({"n": "x"})
    except ValidationError as exc:
        return exc
    raise AssertionError("unreachable")


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(
            asyncpg.CannotConnectNowError("the database system is starting up"), id="starting"
        ),
        pytest.param(_wrapped(asyncpg.CannotConnectNowError("starting up")), id="starting-wrapped"),
        pytest.param(_wrapped(asyncpg.AdminShutdownError("terminating")), id="admin-shutdown"),
        pytest.param(_wrapped(asyncpg.ConnectionDoesNotExistError("gone")), id="connection-lost"),
        pytest.param(_wrapped(asyncpg.SerializationError("conflict")), id="serialization"),
        pytest.param(_wrapped(asyncpg.DeadlockDetectedError("deadlock")), id="deadlock"),
        pytest.param(_wrapped(asyncpg.TooManyConnectionsError("full")), id="too-many-connections"),
        pytest.param(
            asyncpg.InterfaceError("cannot perform operation: another operation is in progress"),
            id="busy-connection",
        ),
        pytest.param(ConnectionRefusedError(111, "refused"), id="refused"),
        pytest.param(TimeoutError(), id="timeout"),
        pytest.param(SagaConflictError("changed concurrently"), id="version-conflict"),
        pytest.param(KafkaConnectionError("no broker"), id="kafka-unreachable"),
        pytest.param(NotLeaderForPartitionError(), id="leader-moved"),
        pytest.param(OutOfOrderSequenceNumber(), id="producer-state-lost"),
        pytest.param(_raised_from(_wrapped(asyncpg.CannotConnectNowError("x"))), id="as-a-cause"),
    ],
)
def test_failures_about_reaching_the_servers_are_transient(error: BaseException) -> None:
    assert is_transient(error)


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(ValueError("bad"), id="value-error"),
        pytest.param(
            IntegrityError("INSERT", {}, asyncpg.UniqueViolationError("dup")), id="unique-violation"
        ),
        pytest.param(_wrapped(asyncpg.DataError("invalid input")), id="data-error"),
        pytest.param(MessageSizeTooLargeError(), id="record-too-large"),
        pytest.param(InvalidSagaDataError("bad data"), id="invalid-saga-data"),
        pytest.param(_validation_error(), id="validation"),
    ],
)
def test_failures_about_the_message_are_not_transient(error: BaseException) -> None:
    assert not is_transient(error)


def test_a_lost_producer_state_needs_a_new_producer() -> None:
    assert needs_new_producer(OutOfOrderSequenceNumber())
    assert needs_new_producer(_raised_from(UnknownProducerId()))
    assert not needs_new_producer(KafkaConnectionError("no broker"))
    assert not needs_new_producer(_wrapped(asyncpg.CannotConnectNowError("x")))
