"""Saga definitions and the pure state machine.

Nothing here does I/O or reads the clock: ``machine.apply(definition, instance, event, now)``
returns the next state, the commands to send and the history to record. It imports only the
wire contract (:mod:`service_sdk.contract`) and pydantic.
"""

from coordinator.core.clock import Clock, FakeClock, SystemClock
from coordinator.core.definition import (
    ChildCompensation,
    ChildSaga,
    Compensation,
    Parallel,
    RetryPolicy,
    SagaDefinition,
    SagaRegistry,
    Step,
    Timer,
    WaitForSignal,
)
from coordinator.core.errors import SagaDefinitionError, SagaError
from coordinator.core.machine import apply, start_saga

__all__ = [
    "ChildCompensation",
    "ChildSaga",
    "Clock",
    "Compensation",
    "FakeClock",
    "Parallel",
    "RetryPolicy",
    "SagaDefinition",
    "SagaDefinitionError",
    "SagaError",
    "SagaRegistry",
    "Step",
    "SystemClock",
    "Timer",
    "WaitForSignal",
    "apply",
    "start_saga",
]
