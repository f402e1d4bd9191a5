"""Timers and signal waits: the saga's durable deadline is the fire time or the timeout;
signals are applied, kept for a wait ahead, or refused with a reason."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from coordinator.core.admission import AdmissionLimits, InFlight
from coordinator.core.definition import SagaDefinition, Timer, WaitForSignal
from coordinator.core.errors import SagaDefinitionError
from coordinator.core.state import (
    AwaitKind,
    DeadlineFired,
    HistoryKind,
    LifecycleKind,
    OperatorAbort,
    PendingSignal,
    ReplyReceived,
    SagaInstance,
    SagaStatus,
    SignalReceived,
    Transition,
)
from service_sdk import Outcome
from tests.unit.shapes_support import NOW, Approval, Trip, begin, comp, fwd, reply, run, step

FIRE_AT = datetime(2026, 1, 9, 8, 0, tzinfo=UTC)


class Waits(SagaDefinition[Trip]):
    name = "waits"
    data_model = Trip
    steps = (
        step("book_flight", field="flight"),
        WaitForSignal[Trip](
            "approval",
            signal="approved",
            timeout=timedelta(hours=2),
            payload_model=Approval,
            on_signal=lambda d, a: d.model_copy(update={"approved_by": a.manager}),
        ),
        Timer[Trip]("pause", delay=lambda d: timedelta(minutes=d.amount)),
        Timer[Trip]("until", until=lambda d: FIRE_AT),
        WaitForSignal[Trip](
            "optional", signal="extra", timeout=timedelta(minutes=5), on_timeout="continue"
        ),
        step("send_tickets", undo=False),
    )


def at_approval() -> SagaInstance:
    inst = begin(Waits).instance
    return run(inst, reply(inst, "book_flight"), definition=Waits).instance


def approve(manager: str = "ann", message_id: str = "sig-1") -> SignalReceived:
    return SignalReceived(message_id, "approved", {"manager": manager})


def fire(inst: SagaInstance, at: datetime) -> Transition:
    (entry,) = inst.awaiting
    return run(inst, DeadlineFired(entry.step, entry.command_id, entry.attempt), at, Waits)


def test_a_wait_sends_nothing_and_its_timeout_is_the_deadline() -> None:
    inst = at_approval()
    (entry,) = inst.awaiting
    assert (entry.step, entry.kind, entry.service) == ("approval", AwaitKind.SIGNAL, None)
    assert inst.deadline_at == NOW + timedelta(hours=2)
    assert inst.current_step == "approval"


def test_a_signal_during_its_wait_is_folded_and_the_saga_goes_on() -> None:
    inst = at_approval()
    t = run(inst, approve(), definition=Waits)
    assert t.rejection is None
    assert t.instance.data["approved_by"] == "ann"
    assert "approval" in t.instance.completed_steps
    assert [e.kind for e in t.history] == [HistoryKind.SIGNAL_RECEIVED, HistoryKind.TIMER_SET]
    assert t.history[0].message_id == "sig-1"
    (timer,) = t.instance.awaiting
    assert (timer.step, timer.kind, timer.deadline_at) == (
        "pause",
        AwaitKind.TIMER,
        NOW + timedelta(minutes=100),
    )
    assert LifecycleKind.STEP_COMPLETED in [e.kind for e in t.events]


def test_a_signal_before_its_wait_is_kept_and_consumed_when_the_wait_begins() -> None:
    inst = begin(Waits).instance
    kept = run(inst, approve("bob", "sig-early"), definition=Waits)
    assert kept.rejection is None
    assert kept.history[0].kind is HistoryKind.SIGNAL_KEPT
    assert kept.instance.pending_signals == (
        PendingSignal("sig-early", "approved", {"manager": "bob"}),
    )
    # The latest per name wins.
    again = run(kept.instance, approve("cat", "sig-later"), definition=Waits).instance
    assert [s.message_id for s in again.pending_signals] == ["sig-later"]

    t = run(again, reply(again, "book_flight"), definition=Waits)
    assert t.instance.pending_signals == ()
    assert t.instance.data["approved_by"] == "cat"
    assert [e.step for e in t.history if e.kind is HistoryKind.SIGNAL_RECEIVED] == ["approval"]
    assert [e.step for e in t.instance.awaiting] == ["pause"]  # straight on to the timer


@pytest.mark.parametrize(
    ("signal", "reason"),
    [
        pytest.param(SignalReceived("s", "nobody_waits", {}), "signal_not_awaited", id="unknown"),
        pytest.param(SignalReceived("s", "approved", {"who": "x"}), "signal_invalid", id="bad"),
    ],
)
def test_a_signal_nobody_awaits_or_an_invalid_one_is_refused(
    signal: SignalReceived, reason: str
) -> None:
    for inst in (begin(Waits).instance, at_approval()):
        t = run(inst, signal, definition=Waits)
        assert t.rejection == reason
        assert not t.changed
        assert t.instance is inst
        assert [e.kind for e in t.history] == [HistoryKind.SIGNAL_REJECTED]
        assert t.history[0].detail["reason"] == reason


def test_a_signal_after_its_wait_passed_or_after_the_end_is_refused() -> None:
    passed = run(at_approval(), approve(), definition=Waits).instance
    assert run(passed, approve(message_id="sig-2"), definition=Waits).rejection == (
        "signal_not_awaited"
    )
    ended = run(begin(Waits).instance, OperatorAbort("op", "stop"), definition=Waits).instance
    while ended.status is SagaStatus.COMPENSATING:
        ended = run(
            ended, reply(ended, ended.awaiting[0].step, payload={}), definition=Waits
        ).instance
    assert ended.is_terminal
    assert run(ended, approve(), definition=Waits).rejection == "saga_terminal"


def test_a_wait_that_times_out_fails_the_step_and_compensates() -> None:
    inst = at_approval()
    t = fire(inst, NOW + timedelta(hours=2))
    assert t.instance.status is SagaStatus.COMPENSATING
    assert [c.command_id for c in t.commands] == [comp("book_flight")]
    assert (t.instance.failure_reason or "").startswith("approval: no signal 'approved'")


def _at(inst: SagaInstance, name: str) -> SagaInstance:
    """Drive ``inst`` (signals and timers) until it awaits ``name``."""
    while inst.awaiting[0].step != name:
        entry = inst.awaiting[0]
        if entry.kind is AwaitKind.SIGNAL:
            inst = run(inst, approve(), definition=Waits).instance
        else:
            assert entry.deadline_at is not None
            inst = fire(inst, entry.deadline_at).instance
    return inst


def test_a_wait_with_a_default_branch_times_out_into_it() -> None:
    inst = _at(at_approval(), "optional")
    t = fire(inst, inst.deadline_at or NOW)
    assert [e.kind for e in t.history][:1] == [HistoryKind.TIMED_OUT_DEFAULT]
    assert [c.command_id for c in t.commands] == [fwd("send_tickets")]
    assert "optional" in t.instance.completed_steps


def test_a_timer_fires_at_its_deadline_once() -> None:
    inst = _at(at_approval(), "pause")
    fired = fire(inst, NOW + timedelta(minutes=100))
    assert [e.kind for e in fired.history] == [HistoryKind.TIMER_FIRED, HistoryKind.TIMER_SET]
    after = fired.instance
    assert after.deadline_at == FIRE_AT  # ``until``: the time itself
    # The same deadline again (a second scanner) is stale: the timer fired once.
    (old,) = inst.awaiting
    again = run(after, DeadlineFired(old.step, old.command_id, old.attempt), definition=Waits)
    assert [e.kind for e in again.history] == [HistoryKind.STALE_DEADLINE]
    assert not again.changed


def test_a_timer_whose_participant_is_said_alive_is_not_postponed() -> None:
    inst = _at(at_approval(), "pause")
    (entry,) = inst.awaiting
    event = DeadlineFired(entry.step, entry.command_id, 1, participant_alive=True)
    t = run(inst, event, NOW + timedelta(minutes=100), Waits)
    assert t.history[0].kind is HistoryKind.TIMER_FIRED


def test_an_abort_while_a_timer_waits_compensates_without_fencing_it() -> None:
    inst = _at(at_approval(), "pause")
    t = run(inst, OperatorAbort("op", "cancelled"), definition=Waits)
    assert [(c.command_id, c.compensates) for c in t.commands] == [(comp("book_flight"), None)]
    assert [e.step for e in t.instance.awaiting] == ["book_flight"]


def test_a_timer_computing_a_naive_time_is_a_definition_error() -> None:
    class Naive(SagaDefinition[Trip]):
        name = "naive"
        data_model = Trip
        steps = (Timer[Trip]("t", until=lambda d: datetime(2030, 1, 1)),)  # noqa: DTZ001

    with pytest.raises(SagaDefinitionError, match="aware datetime"):
        begin(Naive)


def test_a_retryable_reply_and_other_replies_never_fire_a_timer() -> None:
    inst = _at(at_approval(), "pause")
    (entry,) = inst.awaiting
    t = run(
        inst, ReplyReceived("x", "pause", entry.command_id, 1, Outcome.SUCCESS), definition=Waits
    )
    assert [e.kind for e in t.history] == [HistoryKind.STALE_REPLY]
    assert not t.changed


def test_a_kept_signal_that_no_longer_folds_is_recorded_and_the_wait_begins() -> None:
    def fold(d: Trip, signal: object) -> Trip:
        if d.flight is not None:
            raise ValueError("too late for this signal")
        return d

    class Picky(SagaDefinition[Trip]):
        name = "picky"
        data_model = Trip
        steps = (
            step("book_flight", field="flight"),
            WaitForSignal[Trip]("ok", signal="ok", timeout=timedelta(minutes=1), on_signal=fold),
        )

    inst = begin(Picky).instance
    kept = run(inst, SignalReceived("s1", "ok", {}), definition=Picky).instance
    t = run(kept, reply(kept, "book_flight"), definition=Picky)
    rejected = [e for e in t.history if e.kind is HistoryKind.SIGNAL_REJECTED]
    assert [e.detail["reason"] for e in rejected] == ["on_signal failed: too late for this signal"]
    assert t.instance.pending_signals == ()
    assert [e.step for e in t.instance.awaiting] == ["ok"]


def test_a_saga_starting_with_a_timer_is_not_held_by_a_participants_cap() -> None:
    class Delayed(SagaDefinition[Trip]):
        name = "delayed"
        data_model = Trip
        steps = (Timer[Trip]("later", delay=lambda d: timedelta(hours=1)), step("book_flight"))

    limits = AdmissionLimits(default_max_outstanding_per_service=1)
    in_flight = InFlight()
    in_flight.add("other", "book-flight")
    assert Delayed.entry_service() == ""
    assert in_flight.has_room(limits, "delayed", Delayed.entry_service())
    assert not in_flight.has_room(limits, "delayed", "book-flight")
