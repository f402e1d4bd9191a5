"""Saga definitions are validated when their class is created; the registry is explicit."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any, ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from coordinator.core.definition import (
    Compensation,
    RetryPolicy,
    SagaDefinition,
    SagaRegistry,
    Step,
)
from coordinator.core.errors import SagaDefinitionError, SagaError, UnknownSagaTypeError
from saga_defs import ALL_SAGAS, OrderSaga, default_registry
from service_sdk import Command


class Data(BaseModel):
    value: int = 0


class Ping(Command):
    message_type: ClassVar[str] = "test.ping"


class Undo(Command):
    message_type: ClassVar[str] = "test.undo"


class Untyped(Command):
    """A command that forgot its message_type."""


def _step(**changes: Any) -> Step[Data]:
    fields: dict[str, Any] = {
        "name": "ping",
        "service": "tester",
        "command": Ping,
        "build": lambda d: Ping(),
    }
    fields.update(changes)
    return Step[Data](**fields)


def _undo(**changes: Any) -> Compensation[Data]:
    fields: dict[str, Any] = {"command": Undo, "build": lambda d: Undo()}
    fields.update(changes)
    return Compensation[Data](**fields)


def define(
    *, steps: Any = None, name: Any = "tester", version: Any = 1, data_model: Any = Data
) -> type[SagaDefinition[Data]]:
    """Create a definition class; creating it is what validates it."""
    attributes: dict[str, Any] = {"steps": (_step(),) if steps is None else steps}
    for key, value in (("name", name), ("version", version), ("data_model", data_model)):
        if value is not ...:
            attributes[key] = value
    return type("Tester", (SagaDefinition,), attributes)


def test_a_valid_definition_is_accepted() -> None:
    saga = define(steps=(_step(compensation=_undo()), _step(name="pong", service="other-svc")))
    assert saga.step("pong").service == "other-svc"
    assert saga.step_index("pong") == 1
    assert saga.services() == ("tester", "other-svc")


def test_order_saga_is_valid() -> None:
    assert [step.name for step in OrderSaga.steps] == [
        "reserve_inventory",
        "charge_payment",
        "schedule_shipping",
    ]
    assert OrderSaga.services() == ("inventory", "payment", "shipping")
    assert OrderSaga.step("schedule_shipping").compensation is None
    with pytest.raises(KeyError):
        OrderSaga.step("nope")
    with pytest.raises(KeyError):
        OrderSaga.step_index("nope")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"name": ...}, "name must match", id="missing-name"),
        pytest.param({"name": "Order"}, "name must match", id="uppercase-name"),
        pytest.param({"name": "1order"}, "name must match", id="digit-first-name"),
        pytest.param({"name": "order-saga"}, "name must match", id="dash-in-name"),
        pytest.param({"version": 0}, "version", id="zero-version"),
        pytest.param({"version": "1"}, "version", id="str-version"),
        pytest.param({"data_model": ...}, "data_model", id="missing-data-model"),
        pytest.param({"data_model": dict}, "data_model", id="data-model-not-pydantic"),
        pytest.param({"steps": ()}, "non-empty tuple", id="empty-steps"),
        pytest.param({"steps": [_step()]}, "non-empty tuple", id="steps-as-list"),
        pytest.param({"steps": (Ping,)}, "must be a Step", id="not-a-step"),
    ],
)
def test_invalid_definition_raises_at_class_creation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(SagaDefinitionError, match=message):
        define(**kwargs)


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        pytest.param((_step(), _step()), "duplicate step name 'ping'", id="duplicate-step"),
        pytest.param((_step(name="Ping"),), "step name must match", id="bad-step-name"),
        pytest.param((_step(name=""),), "step name must match", id="empty-step-name"),
        pytest.param((_step(service="Bad Service"),), "service must match", id="bad-service"),
        pytest.param((_step(command=Data),), "Command subclass", id="command-not-a-command"),
        pytest.param((_step(command=Ping()),), "Command subclass", id="command-instance"),
        pytest.param((_step(command=Untyped),), "no message_type", id="no-message-type"),
        pytest.param((_step(build="nope"),), "build must be callable", id="build-not-callable"),
        pytest.param((_step(on_success=1),), "on_success must be callable", id="bad-on-success"),
        pytest.param((_step(timeout=timedelta(0)),), "timeout must be positive", id="zero-timeout"),
        pytest.param(
            (_step(timeout=timedelta(seconds=-1)),),
            "timeout must be positive",
            id="negative-timeout",
        ),
        pytest.param(
            (_step(retry=RetryPolicy(max_attempts=0)),), "max_attempts", id="zero-attempts"
        ),
        pytest.param(
            (_step(compensation=Undo),), "must be a Compensation", id="compensation-is-a-command"
        ),
        pytest.param(
            (_step(compensation=_step()),), "must be a Compensation", id="compensation-is-a-step"
        ),
        pytest.param(
            (_step(compensation=_undo(command=Data)),),
            "compensation.command",
            id="compensation-command-not-a-command",
        ),
        pytest.param(
            (_step(compensation=_undo(command=Untyped)),),
            "no message_type",
            id="compensation-without-message-type",
        ),
        pytest.param(
            (_step(compensation=_undo(build=None)),),
            "compensation.build must be callable",
            id="compensation-build-not-callable",
        ),
        pytest.param(
            (_step(compensation=_undo(timeout=timedelta(0))),),
            "compensation timeout must be positive",
            id="compensation-zero-timeout",
        ),
        pytest.param(
            (_step(compensation=_undo(retry=RetryPolicy(jitter=2.0))),),
            "compensation: retry.jitter",
            id="compensation-bad-retry",
        ),
    ],
)
def test_invalid_step_raises_at_class_creation(steps: tuple[Any, ...], message: str) -> None:
    with pytest.raises(SagaDefinitionError, match=message):
        define(steps=steps)


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (RetryPolicy(max_attempts=0), "max_attempts must be >= 1"),
        (RetryPolicy(initial_backoff=timedelta(seconds=-1)), "0 <= initial <= max"),
        (
            RetryPolicy(initial_backoff=timedelta(seconds=10), max_backoff=timedelta(seconds=5)),
            "0 <= initial <= max",
        ),
        (RetryPolicy(multiplier=0.5), "multiplier must be >= 1"),
        (RetryPolicy(jitter=-0.1), "jitter must be within"),
        (RetryPolicy(jitter=1.1), "jitter must be within"),
    ],
)
def test_invalid_retry_policy_raises(policy: RetryPolicy, message: str) -> None:
    with pytest.raises(SagaDefinitionError, match=message):
        policy.validate("here")
    with pytest.raises(SagaDefinitionError, match=message):
        define(steps=(_step(retry=policy),))


def test_definition_errors_belong_to_the_coordinator_tree() -> None:
    with pytest.raises(SagaError) as info:
        define(name="Bad")
    assert not info.value.retriable


# --- RetryPolicy.backoff -------------------------------------------------------------------


def test_backoff_grows_geometrically_without_jitter() -> None:
    policy = RetryPolicy(
        initial_backoff=timedelta(seconds=1),
        max_backoff=timedelta(seconds=10),
        multiplier=2.0,
        jitter=0.0,
    )
    assert [policy.backoff(a, 0.3).total_seconds() for a in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    assert policy.backoff(0, 0.3) == timedelta(seconds=1)


def test_backoff_midpoint_is_the_nominal_wait() -> None:
    assert RetryPolicy().backoff(3, 0.5) == timedelta(seconds=4)


@settings(database=None)
@given(
    attempt=st.integers(min_value=1, max_value=200),
    random_unit=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
    initial=st.floats(min_value=0.0, max_value=30.0),
    extra=st.floats(min_value=0.0, max_value=300.0),
    multiplier=st.floats(min_value=1.0, max_value=4.0),
    jitter=st.floats(min_value=0.0, max_value=1.0),
)
def test_backoff_stays_within_the_cap_and_jitter_range(
    attempt: int, random_unit: float, initial: float, extra: float, multiplier: float, jitter: float
) -> None:
    policy = RetryPolicy(
        initial_backoff=timedelta(seconds=initial),
        max_backoff=timedelta(seconds=initial + extra),
        multiplier=multiplier,
        jitter=jitter,
    )
    policy.validate("generated")
    nominal = min(
        policy.initial_backoff.total_seconds() * multiplier ** (attempt - 1),
        policy.max_backoff.total_seconds(),
    )
    wait = policy.backoff(attempt, random_unit).total_seconds()
    slack = 1e-6 * max(nominal, 1.0)  # timedelta keeps microseconds only
    assert wait >= 0.0
    assert nominal * (1 - jitter) - slack <= wait <= nominal * (1 + jitter) + slack
    assert wait <= policy.max_backoff.total_seconds() * (1 + jitter) + slack


# --- registry ------------------------------------------------------------------------------


def test_registry_looks_definitions_up_by_name() -> None:
    other = define(name="other", steps=(_step(service="svc"),))
    registry = SagaRegistry([OrderSaga, other])
    assert registry.get("order") is OrderSaga
    assert registry.get("other") is other
    assert "order" in registry
    assert "missing" not in registry
    assert registry.names() == ("order", "other")
    assert list(registry) == [OrderSaga, other]
    assert registry.services() == ("inventory", "payment", "shipping", "svc")


def test_registry_rejects_two_definitions_with_one_name() -> None:
    twin = define(name="order")
    with pytest.raises(SagaDefinitionError, match="two definitions are named 'order'"):
        SagaRegistry([OrderSaga, twin])


def test_registry_raises_for_unknown_names() -> None:
    with pytest.raises(UnknownSagaTypeError, match="unknown saga type 'nope'"):
        SagaRegistry([OrderSaga]).get("nope")


def test_default_registry_holds_every_saga() -> None:
    registry = default_registry()
    assert registry.names() == tuple(saga.name for saga in ALL_SAGAS)
    assert registry.get("order") is OrderSaga


def test_registries_are_independent() -> None:
    factory: Callable[[], SagaRegistry] = default_registry
    assert factory() is not factory()
    assert SagaRegistry([]).names() == ()
