"""The new saga shapes are validated when a definition class (or its registry) is created."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel

from coordinator.core.definition import (
    ChildCompensation,
    ChildSaga,
    Parallel,
    SagaDefinition,
    SagaRegistry,
    Step,
    Timer,
    WaitForSignal,
)
from coordinator.core.errors import SagaDefinitionError
from service_sdk import Command


class Data(BaseModel):
    amount: int = 0


class Ping(Command):
    message_type: ClassVar[str] = "shapes.ping"


def step(name: str, service: str = "svc") -> Step[Data]:
    return Step[Data](name=name, service=service, command=Ping, build=lambda d: Ping())


def define(*stages: Any, name: str = "shaped") -> type[SagaDefinition[Data]]:
    return type("Shaped", (SagaDefinition,), {"name": name, "data_model": Data, "steps": stages})


def test_a_definition_mixing_every_shape_is_accepted_and_indexed() -> None:
    saga = define(
        step("first", "a"),
        Parallel[Data]("group", (step("left", "b"), step("right", "c"))),
        WaitForSignal[Data]("approval", signal="approved", timeout=timedelta(hours=1)),
        Timer[Data]("pause", delay=lambda d: timedelta(minutes=5)),
        ChildSaga[Data]("child", saga_type="other", build=lambda d: {"n": 1}),
        Step[Data](
            name="checked", service="d", command=Ping, build=lambda d: Ping(), run_if=lambda d: True
        ),
    )
    assert [u.name for u in saga.units()] == [
        "first",
        "left",
        "right",
        "approval",
        "pause",
        "child",
        "checked",
    ]
    assert saga.services() == ("a", "b", "c", "d")
    assert saga.stage_index("right") == 1
    assert saga.stage_index("group") == 1
    assert saga.stage_index("child") == 4
    assert saga.child_types() == ("other",)
    assert saga.entry_service() == "a"
    with pytest.raises(KeyError):
        saga.step("pause")  # a timer is not a plain step


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        pytest.param(
            (Parallel[Data]("g", (step("x"), step("y"))), step("x")),
            "duplicate step name 'x'",
            id="member-name-reused",
        ),
        pytest.param(
            (step("g"), Parallel[Data]("g", (step("x"), step("y")))),
            "duplicate step name 'g'",
            id="group-name-reused",
        ),
        pytest.param((Parallel[Data]("g", (step("x"),)),), "two or more steps", id="group-of-one"),
        pytest.param(
            (
                Parallel[Data](
                    "g",
                    (step("x"), Timer[Data]("t", delay=lambda d: timedelta(1))),  # type: ignore[arg-type]
                ),
            ),
            "plain Steps only",
            id="group-of-timer",
        ),
        pytest.param((Timer[Data]("t"),), "exactly one of delay and until", id="timer-neither"),
        pytest.param(
            (
                Timer[Data](
                    "t",
                    delay=lambda d: timedelta(1),
                    until=lambda d: datetime(2030, 1, 1, tzinfo=UTC),
                ),
            ),
            "exactly one of delay and until",
            id="timer-both",
        ),
        pytest.param(
            (WaitForSignal[Data]("w", signal="ok", timeout=timedelta(0)),),
            "positive",
            id="wait-no-timeout",
        ),
        pytest.param(
            (WaitForSignal[Data]("w", signal="Bad Name", timeout=timedelta(1)),),
            "signal must match",
            id="wait-bad-signal",
        ),
        pytest.param(
            (
                WaitForSignal[Data](
                    "w",
                    signal="ok",
                    timeout=timedelta(1),
                    on_timeout="maybe",  # type: ignore[arg-type]
                ),
            ),
            "on_timeout",
            id="wait-bad-on-timeout",
        ),
        pytest.param(
            (
                Step[Data](
                    name="s",
                    service="svc",
                    command=Ping,
                    build=lambda d: Ping(),
                    run_if=True,  # type: ignore[arg-type]
                ),
            ),
            "run_if must be callable",
            id="run-if-not-callable",
        ),
        pytest.param(
            (ChildSaga[Data]("c", saga_type="x", build=lambda d: {}, timeout=timedelta(0)),),
            "positive",
            id="child-no-timeout",
        ),
    ],
)
def test_a_wrong_shape_fails_at_class_creation(stages: tuple[Any, ...], message: str) -> None:
    with pytest.raises(SagaDefinitionError, match=message):
        define(*stages)


def test_a_child_saga_type_must_be_registered_with_its_parent() -> None:
    child = define(step("only"), name="child_type")
    parent = define(
        ChildSaga[Data](
            "c",
            saga_type="child_type",
            build=lambda d: {},
            compensation=ChildCompensation[Data]("undo_type", build=lambda d: {}),
        ),
        name="parent_type",
    )
    with pytest.raises(SagaDefinitionError, match="'undo_type', which is not registered"):
        SagaRegistry([parent, child])
    undo = define(step("only"), name="undo_type")
    assert SagaRegistry([parent, child, undo]).names() == ("child_type", "parent_type", "undo_type")
