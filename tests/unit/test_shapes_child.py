"""Child sagas, engine side: a ChildStart instead of a command; the child's end arrives as an
ordinary reply to its saga id; a completed child is undone by starting its undo saga."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from coordinator.core.definition import (
    ChildCompensation,
    ChildSaga,
    SagaDefinition,
    SagaRegistry,
)
from coordinator.core.machine import start_saga
from coordinator.core.state import (
    AwaitKind,
    ChildStart,
    DeadlineFired,
    HistoryKind,
    OperatorAbort,
    OperatorRetry,
    ReplyReceived,
    SagaInstance,
    SagaStatus,
    StartSaga,
    Transition,
)
from service_sdk import Outcome
from tests.unit.shapes_support import NOW, SAGA_ID, Trip, begin, comp, fwd, reply, run, step


class Points(SagaDefinition[Trip]):
    name = "points"
    data_model = Trip
    steps = (step("award"),)


class Revoke(SagaDefinition[Trip]):
    name = "revoke_points"
    data_model = Trip
    steps = (step("revoke"),)


class Parent(SagaDefinition[Trip]):
    name = "parent"
    data_model = Trip
    steps = (
        step("pay"),
        ChildSaga[Trip](
            "loyalty",
            saga_type="points",
            build=lambda d: {"amount": d.amount},
            on_success=lambda d, child: d.model_copy(update={"points": child["points"]}),
            compensation=ChildCompensation[Trip]("revoke_points", lambda d: {"points": d.points}),
            timeout=timedelta(minutes=10),
        ),
        step("notify", undo=False),
    )


def go(inst: SagaInstance, event: Any, at: Any = NOW) -> Transition:
    return run(inst, event, at, definition=Parent)


def at_child() -> Transition:
    inst = begin(Parent, amount=300).instance
    return go(inst, reply(inst, "pay"))


def child_end(inst: SagaInstance, outcome: Outcome, payload: dict[str, Any]) -> ReplyReceived:
    (entry,) = inst.awaiting
    return ReplyReceived("end", entry.step, entry.command_id, entry.attempt, outcome, payload)


def test_the_registry_knows_the_family() -> None:
    assert SagaRegistry([Parent, Points, Revoke]).names() == ("parent", "points", "revoke_points")


def test_a_child_step_emits_a_child_start_not_a_command() -> None:
    t = at_child()
    assert t.commands == ()
    assert t.child_starts == (
        ChildStart("points", fwd("loyalty"), {"amount": 300}, SAGA_ID, "loyalty", 1),
    )
    (entry,) = t.instance.awaiting
    assert (entry.kind, entry.command_id, entry.service) == (AwaitKind.CHILD, fwd("loyalty"), None)
    assert t.instance.deadline_at == NOW + timedelta(minutes=10)
    assert t.history[-1].kind is HistoryKind.CHILD_STARTED


def test_the_child_started_carries_its_parent() -> None:
    start = at_child().child_starts[0]
    event = StartSaga(
        "m", start.data, parent_saga_id=start.parent_saga_id, parent_step=start.parent_step
    )
    child = start_saga(Points, start.saga_id, event, NOW).instance
    assert (child.parent_saga_id, child.parent_step) == (SAGA_ID, "loyalty")


def test_a_completed_child_is_the_steps_success() -> None:
    inst = at_child().instance
    t = go(inst, child_end(inst, Outcome.SUCCESS, {"amount": 300, "points": 30}))
    assert t.instance.data["points"] == 30
    assert "loyalty" in t.instance.completed_steps
    assert [c.step for c in t.commands] == ["notify"]


def test_a_failed_child_is_the_steps_failure() -> None:
    inst = at_child().instance
    t = go(inst, child_end(inst, Outcome.FAILURE, {}))
    assert t.instance.status is SagaStatus.COMPENSATING
    assert [c.command_id for c in t.commands] == [comp("pay")]
    assert t.child_starts == ()


def test_a_completed_child_is_undone_by_its_undo_saga() -> None:
    inst = at_child().instance
    inst = go(inst, child_end(inst, Outcome.SUCCESS, {"points": 30})).instance
    t = go(inst, reply(inst, "notify", Outcome.FAILURE, error="no"))
    assert t.commands == ()
    assert t.child_starts == (
        ChildStart("revoke_points", comp("loyalty"), {"points": 30}, SAGA_ID, "loyalty", 1),
    )
    (entry,) = t.instance.awaiting
    assert entry.kind is AwaitKind.CHILD_COMPENSATION
    t = go(t.instance, child_end(t.instance, Outcome.SUCCESS, {}))
    assert [c.command_id for c in t.commands] == [comp("pay")]
    assert t.instance.compensated_steps == ("loyalty",)


def test_an_undo_saga_that_fails_fails_the_parent_and_a_retry_starts_a_new_one() -> None:
    inst = at_child().instance
    inst = go(inst, child_end(inst, Outcome.SUCCESS, {"points": 30})).instance
    inst = go(inst, reply(inst, "notify", Outcome.FAILURE, error="no")).instance
    failed = go(inst, child_end(inst, Outcome.FAILURE, {})).instance
    assert failed.status is SagaStatus.FAILED
    retried = go(failed, OperatorRetry("op", "again"))
    assert [s.saga_id for s in retried.child_starts] == [comp("loyalty", epoch=1)]


def test_a_child_deadline_starts_it_again_and_never_gives_it_up() -> None:
    inst = at_child().instance
    for attempt in (1, 2, 3, 4):
        t = go(
            inst, DeadlineFired("loyalty", fwd("loyalty"), attempt), NOW + timedelta(hours=attempt)
        )
        assert [s.attempt for s in t.child_starts] == [attempt + 1]
        assert t.instance.status is SagaStatus.RUNNING
        inst = t.instance
    # An end notice for an older start is still the end.
    end = ReplyReceived("end", "loyalty", fwd("loyalty"), 1, Outcome.SUCCESS, {"points": 1})
    assert go(inst, end).instance.data["points"] == 1


def test_an_abort_while_the_child_runs_awaits_its_end_then_undoes_it() -> None:
    inst = at_child().instance
    t = go(inst, OperatorAbort("op", "stop"))
    assert t.instance.status is SagaStatus.COMPENSATING
    assert t.commands == ()
    assert t.child_starts == ()
    t = go(t.instance, child_end(t.instance, Outcome.SUCCESS, {"points": 9}))
    assert [s.saga_type for s in t.child_starts] == ["revoke_points"]
    t = go(t.instance, child_end(t.instance, Outcome.SUCCESS, {}))
    t = go(t.instance, reply(t.instance, "pay", payload={}))
    assert t.instance.status is SagaStatus.COMPENSATED


def test_an_abort_while_the_child_runs_and_it_fails_undoes_only_the_rest() -> None:
    inst = go(at_child().instance, OperatorAbort("op", "stop")).instance
    t = go(inst, child_end(inst, Outcome.FAILURE, {}))
    assert [c.command_id for c in t.commands] == [comp("pay")]
