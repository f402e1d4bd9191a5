"""Errors raised by the coordinator.

The tree::

    SagaError                        root of everything the coordinator raises
    ├── SagaDefinitionError          a saga definition is wrong (raised at import)
    ├── InvalidSagaDataError         a start request's data does not fit the saga's data model
    ├── ConflictingStartError        a start reuses a saga id with other data
    ├── UnknownSagaTypeError         no registered definition has that name
    │   └── UnknownSagaVersionError  that name is registered, but not that version
    ├── SagaNotFoundError            no saga with that id
    ├── SagaConflictError            a concurrent writer changed the saga (retriable)
    ├── InvalidOperatorActionError   the action does not apply to the saga's status
    └── DeadLetterNotFoundError      no dead letter at that topic, partition and offset
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "ConflictingStartError",
    "DeadLetterNotFoundError",
    "InvalidOperatorActionError",
    "InvalidSagaDataError",
    "SagaConflictError",
    "SagaDefinitionError",
    "SagaError",
    "SagaNotFoundError",
    "UnknownSagaTypeError",
    "UnknownSagaVersionError",
]


class SagaError(Exception):
    """Root of the coordinator's errors."""

    retriable: ClassVar[bool] = False

    def __init__(self, message: str, *, saga_id: str | None = None, step: str | None = None):
        super().__init__(message)
        self.saga_id = saga_id
        self.step = step


class SagaDefinitionError(SagaError):
    """A saga definition is invalid; raised when its class is created."""


class InvalidSagaDataError(SagaError):
    """A saga's data does not validate against its definition's ``data_model``."""


class ConflictingStartError(SagaError):
    """A start request names a saga id that exists already, started with other data.

    ``saga_id`` is the stored saga's id: the first start won and is unchanged.
    """


class UnknownSagaTypeError(SagaError):
    """No registered saga definition has the requested name."""


class UnknownSagaVersionError(UnknownSagaTypeError):
    """The saga type is registered, but not the definition version a saga started with."""


class SagaNotFoundError(SagaError):
    """No saga instance exists with the requested id."""


class SagaConflictError(SagaError):
    """The saga row changed under us (optimistic version check failed)."""

    retriable: ClassVar[bool] = True


class InvalidOperatorActionError(SagaError):
    """An operator action does not apply to the saga in its current status."""


class DeadLetterNotFoundError(SagaError):
    """No record exists at the requested dead-letter topic, partition and offset."""
