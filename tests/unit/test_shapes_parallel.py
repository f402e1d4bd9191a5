"""Parallel groups: commands sent together; the saga goes on once all succeeded; a failure
fences the siblings in flight, compensates every succeeded sibling once, then earlier steps."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from rich.console import Console

from coordinator.api.ui.timeline import attempts
from coordinator.cli.sagas import render_timeline
from coordinator.core.definition import Parallel, SagaDefinition, SagaRegistry
from coordinator.core.errors import InvalidOperatorActionError
from coordinator.core.migration import migrate_saga
from coordinator.core.state import (
    AwaitKind,
    CommandPickedUp,
    CommandPurpose,
    DeadlineFired,
    HistoryKind,
    OperatorAbort,
    OperatorRetry,
    ReplyReceived,
    SagaInstance,
    SagaStatus,
    Transition,
)
from coordinator.ops.actions import SagaTimeline
from coordinator.store.records import HistoryRecord
from service_sdk import FENCE_MESSAGE_TYPE, Outcome
from tests.unit.shapes_support import NOW, Trip, awaited_steps, begin, comp, fwd, reply, run, step


class Group(SagaDefinition[Trip]):
    name = "group"
    data_model = Trip
    steps = (
        step("pay"),
        Parallel[Trip](
            "book",
            (
                step("book_flight", field="flight"),
                step("book_hotel", field="hotel"),
                step("book_car", undo=False, field="car"),
            ),
        ),
        step("confirm", undo=False),
    )


def go(inst: SagaInstance, event: object, at: object = NOW) -> Transition:
    return run(inst, event, at, definition=Group)  # type: ignore[arg-type]


def in_group() -> SagaInstance:
    inst = begin(Group).instance
    return go(inst, reply(inst, "pay")).instance


def test_the_members_commands_are_sent_together_and_all_awaited() -> None:
    inst = begin(Group).instance
    t = go(inst, reply(inst, "pay"))
    assert [(c.step, c.command_id, c.purpose) for c in t.commands] == [
        ("book_flight", fwd("book_flight"), CommandPurpose.FORWARD),
        ("book_hotel", fwd("book_hotel"), CommandPurpose.FORWARD),
        ("book_car", fwd("book_car"), CommandPurpose.FORWARD),
    ]
    assert awaited_steps(t.instance) == {"book_flight", "book_hotel", "book_car"}
    assert {e.service for e in t.instance.awaiting} == {"book-flight", "book-hotel", "book-car"}
    assert t.instance.deadline_at == NOW + timedelta(seconds=10)


def test_the_saga_moves_on_once_every_member_succeeded_in_any_order() -> None:
    inst = in_group()
    for name in ("book_hotel", "book_car"):
        t = go(inst, reply(inst, name))
        assert t.commands == ()
        inst = t.instance
    assert awaited_steps(inst) == {"book_flight"}
    t = go(inst, reply(inst, "book_flight"))
    assert [c.step for c in t.commands] == ["confirm"]
    assert t.instance.completed_steps == ("pay", "book_hotel", "book_car", "book_flight")
    assert (t.instance.data["flight"], t.instance.data["hotel"]) == (
        "book_flight-ref",
        "book_hotel-ref",
    )


def test_a_member_failure_fences_siblings_in_flight_and_undoes_the_succeeded_once() -> None:
    inst = in_group()
    inst = go(inst, reply(inst, "book_hotel")).instance  # succeeded
    t = go(inst, reply(inst, "book_car", Outcome.FAILURE, error="no cars"))
    assert t.instance.status is SagaStatus.COMPENSATING
    assert t.instance.failure_reason == "book_car: no cars"
    # The flight is still in flight: its compensation goes first, naming its command.
    (undo,) = t.commands
    assert (undo.step, undo.command_id, undo.compensates) == (
        "book_flight",
        comp("book_flight"),
        fwd("book_flight"),
    )
    inst = t.instance
    assert inst.in_doubt_step == "book_flight"
    # The flight's own late success changes nothing: its compensation settles it.
    late = go(
        inst,
        ReplyReceived("late", "book_flight", fwd("book_flight"), 1, Outcome.SUCCESS, {"ref": "f"}),
    )
    assert late.history[0].kind is HistoryKind.LATE_REPLY
    assert not late.changed
    sent: list[str] = []
    while inst.status is SagaStatus.COMPENSATING:
        t = go(inst, reply(inst, inst.awaiting[0].step, payload={}))
        sent.extend(c.step for c in t.commands)
        inst = t.instance
    assert sent == ["book_hotel", "pay"]
    assert inst.status is SagaStatus.COMPENSATED
    assert inst.compensated_steps == ("book_flight", "book_hotel", "pay")
    assert "book_car" not in inst.compensated_steps  # failed: nothing happened


def test_a_member_without_compensation_in_flight_is_fenced() -> None:
    inst = in_group()
    t = go(inst, reply(inst, "book_flight", Outcome.FAILURE, error="full"))
    # hotel first (in order), then car: car has no compensation, so a fence.
    (first,) = t.commands
    assert first.step == "book_hotel"
    t = go(t.instance, reply(t.instance, "book_hotel", payload={"fenced": True}))
    (fence,) = t.commands
    assert (fence.step, fence.message_type, fence.compensates) == (
        "book_car",
        FENCE_MESSAGE_TYPE,
        fwd("book_car"),
    )
    t = go(t.instance, reply(t.instance, "book_car", payload={"fenced": True}))
    (refund,) = t.commands
    assert refund.step == "pay"


def test_members_retry_and_time_out_on_their_own() -> None:
    inst = in_group()
    flight = next(e for e in inst.awaiting if e.step == "book_flight")
    picked = go(
        inst, CommandPickedUp("book_hotel", fwd("book_hotel"), 1, NOW + timedelta(seconds=3))
    )
    hotel = next(e for e in picked.instance.awaiting if e.step == "book_hotel")
    assert hotel.deadline_at == NOW + timedelta(seconds=13)
    assert picked.instance.deadline_at == NOW + timedelta(seconds=10)  # the earliest
    t = go(
        picked.instance,
        DeadlineFired("book_flight", flight.command_id, 1),
        NOW + timedelta(seconds=10),
    )
    (resend,) = t.commands
    assert (resend.step, resend.attempt, resend.purpose) == ("book_flight", 2, CommandPurpose.RETRY)
    assert next(e for e in t.instance.awaiting if e.step == "book_hotel") == hotel
    # Retries exhausted: the flight is in doubt, like its siblings in flight.
    t = go(
        t.instance, DeadlineFired("book_flight", flight.command_id, 2), NOW + timedelta(seconds=30)
    )
    assert t.instance.status is SagaStatus.COMPENSATING
    assert [c.compensates for c in t.commands] == [fwd("book_flight")]
    given_up = {e.step for e in t.instance.awaiting if e.kind is AwaitKind.FORWARD}
    assert given_up == {"book_hotel", "book_car"}


def test_an_abort_in_a_group_undoes_every_member_in_flight() -> None:
    inst = go(in_group(), OperatorAbort("op", "stop")).instance
    undone: list[tuple[str, str | None]] = []
    while inst.status is SagaStatus.COMPENSATING:
        entry = next(e for e in inst.awaiting if e.deadline_at is not None)
        undone.append((entry.step, entry.compensates))
        inst = go(inst, reply(inst, entry.step, payload={"fenced": True})).instance
    assert undone == [
        ("book_flight", fwd("book_flight")),
        ("book_hotel", fwd("book_hotel")),
        ("book_car", fwd("book_car")),
        ("pay", None),
    ]
    assert inst.status is SagaStatus.COMPENSATED


def test_a_refused_undo_still_fences_the_rest_then_fails_and_an_operator_resumes() -> None:
    inst = go(in_group(), OperatorAbort("op", "stop")).instance
    t = go(inst, reply(inst, "book_flight", Outcome.FAILURE, error="airline down"))
    assert t.instance.status is SagaStatus.COMPENSATING  # the hotel and car are fenced first
    assert [c.step for c in t.commands] == ["book_hotel"]
    inst = go(t.instance, reply(t.instance, "book_hotel", payload={"fenced": True})).instance
    t = go(inst, reply(inst, "book_car", payload={"fenced": True}))
    assert t.instance.status is SagaStatus.FAILED
    assert t.commands == ()
    assert t.instance.current_step == "book_flight"
    assert t.instance.failure_reason == "compensation of book_flight failed: airline down"
    retried = go(t.instance, OperatorRetry("op", "airline back"))
    (resend,) = retried.commands
    assert (resend.step, resend.command_id, resend.compensates) == (
        "book_flight",
        comp("book_flight", epoch=1),
        fwd("book_flight"),
    )
    inst = retried.instance
    while inst.status is SagaStatus.COMPENSATING:
        inst = go(inst, reply(inst, inst.awaiting[0].step, payload={})).instance
    assert inst.status is SagaStatus.COMPENSATED
    assert sorted(inst.compensated_steps) == ["book_car", "book_flight", "book_hotel", "pay"]


def test_duplicate_replies_of_members_change_nothing() -> None:
    inst = in_group()
    first = go(inst, reply(inst, "book_hotel"))
    again = go(first.instance, reply(inst, "book_hotel", message_id="dup"))
    assert [e.kind for e in again.history] == [HistoryKind.DUPLICATE_REPLY]
    assert again.instance is first.instance


class GroupV2(SagaDefinition[Trip]):
    name = "group"
    version = 2
    data_model = Trip
    steps = (*Group.steps[:2], step("insure"), step("confirm", undo=False))


class GroupV3(SagaDefinition[Trip]):
    name = "group"
    version = 3
    data_model = Trip
    steps = (step("pay"), step("book_flight"), step("confirm", undo=False))


def test_a_saga_in_a_group_migrates_only_where_the_group_stands_alike() -> None:
    registry = SagaRegistry([Group, GroupV2, GroupV3])
    inst = in_group()
    inst = go(inst, reply(inst, "book_hotel")).instance
    moved = migrate_saga(registry, inst, 2, actor="op", reason="r", now=NOW).instance
    assert moved.definition_version == 2
    with pytest.raises(InvalidOperatorActionError, match="cannot carry on"):
        migrate_saga(registry, inst, 3, actor="op", reason="r", now=NOW)


def test_the_console_shows_every_member_in_flight_as_pending() -> None:
    inst = begin(Group).instance
    t = go(inst, reply(inst, "pay"))
    history = [
        HistoryRecord(i, inst.saga_id, NOW, e.kind.value, e.step, e.message_id, e.detail)
        for i, e in enumerate((*begin(Group).history, *t.history))
    ]
    found = attempts(history, t.instance)
    assert {(a.step, a.outcome) for a in found if a.step != "pay"} == {
        ("book_flight", "pending"),
        ("book_hotel", "pending"),
        ("book_car", "pending"),
    }


def test_an_operator_retry_in_a_group_resends_every_member_in_flight() -> None:
    inst = in_group()
    inst = go(inst, reply(inst, "book_hotel")).instance
    t = go(inst, OperatorRetry("op", "nudge"))
    assert [(c.step, c.command_id, c.attempt, c.purpose) for c in t.commands] == [
        ("book_flight", fwd("book_flight"), 2, CommandPurpose.RETRY),
        ("book_car", fwd("book_car"), 2, CommandPurpose.RETRY),
    ]


def test_saga_show_lists_every_member_awaited_and_the_skipped_steps() -> None:
    inst = replace(in_group(), skipped_steps=("check_fraud",))
    console = Console(width=200, record=True)
    render_timeline(console, SagaTimeline(inst, ()), NOW)
    text = console.export_text()
    for name in ("book_flight", "book_hotel", "book_car", "check_fraud"):
        assert name in text
    assert "awaiting" in text
    assert "skipped" in text
