"""Saga definitions and the pure state machine.

Nothing here does I/O or reads the clock: ``machine.apply(definition, instance, event, now)``
returns the next state, the commands to send and the history to record. It imports only the
wire contract (:mod:`service_sdk.contract`) and pydantic.
"""

from coordinator.core.clock import Clock, FakeClock, SystemClock
from coordinator.core.definition import (
    Compensation,
    RetryPolicy,
    SagaDefinition,
    SagaRegistry,
    Step,
)
from coordinator.core.errors import SagaDefinitionError, SagaError
from coordinator.core.machine import apply, start_saga

__all__ = [
    "Clock",
    "Compensation",
    "FakeClock",
    "RetryPolicy",
    "SagaDefinition",
    "SagaDefinitionError",
    "SagaError",
    "SagaRegistry",
    "Step",
    "SystemClock",
    "apply",
    "start_saga",
]
