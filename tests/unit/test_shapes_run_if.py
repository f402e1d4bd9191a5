"""Conditional steps: ``run_if`` false skips a step (or a group) with a history entry and
nothing to compensate."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from coordinator.core.definition import Parallel, SagaDefinition
from coordinator.core.errors import SagaDefinitionError
from coordinator.core.state import HistoryKind, SagaStatus
from service_sdk import Outcome
from tests.unit.shapes_support import (
    Trip,
    awaited_steps,
    begin,
    comp,
    fwd,
    reply,
    run,
    step,
)


class Conditional(SagaDefinition[Trip]):
    name = "conditional"
    data_model = Trip
    steps = (
        step("first"),
        step("fraud", run_if=lambda d: d.amount > 1000),
        Parallel[Trip](
            "extras",
            (step("extra_a"), step("extra_b", run_if=lambda d: d.amount > 50)),
            run_if=lambda d: d.amount > 10,
        ),
        step("last", undo=False),
    )


def go(inst: Any, event: Any) -> Any:
    return run(inst, event, definition=Conditional)


def test_a_step_whose_predicate_says_no_is_skipped_and_recorded() -> None:
    inst = begin(Conditional, amount=200).instance
    t = go(inst, reply(inst, "first"))
    assert [e.kind for e in t.history] == [
        HistoryKind.STEP_SUCCEEDED,
        HistoryKind.STEP_SKIPPED,
        HistoryKind.COMMAND_SENT,
        HistoryKind.COMMAND_SENT,
    ]
    assert t.history[1].step == "fraud"
    assert t.instance.skipped_steps == ("fraud",)
    assert awaited_steps(t.instance) == {"extra_a", "extra_b"}
    assert [c.command_id for c in t.commands] == [fwd("extra_a"), fwd("extra_b")]


def test_a_step_whose_predicate_says_yes_runs() -> None:
    inst = begin(Conditional, amount=5000).instance
    t = go(inst, reply(inst, "first"))
    assert [c.command_id for c in t.commands] == [fwd("fraud")]
    assert t.instance.skipped_steps == ()


def test_a_skipped_step_is_not_compensated() -> None:
    inst = begin(Conditional, amount=200).instance
    inst = go(inst, reply(inst, "first")).instance
    inst = go(inst, reply(inst, "extra_a")).instance
    inst = go(inst, reply(inst, "extra_b")).instance
    t = go(inst, reply(inst, "last", Outcome.FAILURE, error="no"))
    # extras undone newest first, then first; fraud (skipped) never.
    undone = []
    while t.instance.status is SagaStatus.COMPENSATING:
        (command,) = t.commands
        undone.append(command.step)
        assert command.command_id == comp(command.step)
        t = go(t.instance, reply(t.instance, command.step, payload={}))
    assert undone == ["extra_b", "extra_a", "first"]
    assert t.instance.status is SagaStatus.COMPENSATED
    assert "fraud" not in t.instance.compensated_steps


def test_a_skipped_group_and_a_skipped_member() -> None:
    small = begin(Conditional, amount=5).instance
    t = go(small, reply(small, "first"))
    assert t.instance.skipped_steps == ("fraud", "extras")
    assert [c.step for c in t.commands] == ["last"]

    medium = begin(Conditional, amount=20).instance
    t = go(medium, reply(medium, "first"))
    assert t.instance.skipped_steps == ("fraud", "extra_b")
    assert [c.step for c in t.commands] == ["extra_a"]


def test_a_saga_whose_every_step_is_skipped_completes_at_start() -> None:
    class Nothing(SagaDefinition[Trip]):
        name = "nothing"
        data_model = Trip
        steps = (step("only", run_if=lambda d: False),)

    t = begin(Nothing)
    assert t.instance.status is SagaStatus.COMPLETED
    assert [e.kind for e in t.history] == [
        HistoryKind.STARTED,
        HistoryKind.STEP_SKIPPED,
        HistoryKind.COMPLETED,
    ]
    assert t.commands == ()


def test_a_predicate_that_raises_is_a_definition_error() -> None:
    class Broken(SagaDefinition[Trip]):
        name = "broken"
        data_model = Trip
        steps = (step("only", run_if=lambda d: 1 / 0),)

    with pytest.raises(SagaDefinitionError, match="run_if failed"):
        begin(Broken)


def test_the_predicate_sees_the_data_as_it_is_when_the_step_is_reached() -> None:
    class Late(SagaDefinition[Trip]):
        name = "late"
        data_model = Trip
        steps = (
            step("book_flight", field="flight"),
            step("insure", run_if=lambda d: d.flight is not None),
        )

    inst = begin(Late).instance
    t = run(inst, reply(inst, "book_flight"), definition=Late)
    assert [c.step for c in t.commands] == ["insure"]
    assert timedelta(0) < (t.instance.deadline_at or inst.created_at) - inst.created_at
