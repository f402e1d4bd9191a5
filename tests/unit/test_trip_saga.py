"""The trip saga (saga_defs.trip) through the pure engine, its participants played here:
which stages run for which amounts, what a failure undoes, and when the reminder fires."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from coordinator.core.machine import apply, start_saga
from coordinator.core.state import (
    AwaitKind,
    DeadlineFired,
    HistoryKind,
    ReplyReceived,
    SagaInstance,
    SagaStatus,
    SignalReceived,
    StartSaga,
    Transition,
)
from saga_defs import trip_registry
from saga_defs.trip import (
    APPROVAL_ABOVE_CENTS,
    FRAUD_CHECK_ABOVE_CENTS,
    LoyaltyStatementSaga,
    TripSaga,
    points_for,
)
from service_sdk import Outcome

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
DEPARTS = NOW + timedelta(days=3)
REPLIES: dict[str, dict[str, Any]] = {
    "book_flight": {"booking_ref": "F-1"},
    "book_hotel": {"booking_ref": "H-1"},
    "rent_car": {"rental_ref": "C-1"},
    "fraud_check": {"score": 7},
    "issue_tickets": {"ticket_ref": "T-1"},
}


@dataclass
class Run:
    """What a trip did, as its participants and the coordinator saw it."""

    instance: SagaInstance
    commands: Counter[tuple[str, str]] = field(default_factory=Counter)
    children: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    timer_fired_at: datetime | None = None

    def absorb(self, transition: Transition) -> None:
        self.instance = transition.instance
        for c in transition.commands:
            self.commands[(c.step, c.purpose.value)] += 1
        self.children.extend((s.saga_type, s.data) for s in transition.child_starts)
        self.kinds.extend(str(h.kind) for h in transition.history)


def _trip(amount_cents: int, *, failing: tuple[str, ...] = ()) -> Run:
    """Run a trip to its end; the steps in ``failing`` are refused by their participants."""
    data = {
        "trip_id": "trip-1",
        "customer_id": "cust-1",
        "origin": "ZRH",
        "destination": "LIS",
        "departs_at": DEPARTS.isoformat(),
        "nights": 3,
        "amount_cents": amount_cents,
        "remind_before_s": 86_400,
    }
    now = NOW
    first = start_saga(TripSaga, "trip-1", StartSaga("m-0", data), now)
    run = Run(first.instance)
    run.absorb(first)
    for turn in range(100):
        inst = run.instance
        if inst.is_terminal:
            return run
        entry = inst.awaiting[0]
        if entry.kind is AwaitKind.TIMER:
            assert entry.deadline_at is not None
            now = max(now, entry.deadline_at)
            run.timer_fired_at = now
            event: Any = DeadlineFired(entry.step, entry.command_id, entry.attempt)
        elif entry.kind is AwaitKind.SIGNAL:
            event = SignalReceived(f"sig-{turn}", "approval", {"approved_by": "mia"})
        else:
            forward = entry.kind in (AwaitKind.FORWARD, AwaitKind.CHILD)
            refused = forward and entry.step in failing
            payload: dict[str, Any] = {}
            if forward and not refused:
                payload = REPLIES.get(entry.step, {})
                if entry.kind is AwaitKind.CHILD:
                    payload = {**run.children[-1][1], "balance": 10}
            event = ReplyReceived(
                f"m-{turn}",
                entry.step,
                entry.command_id,
                entry.attempt,
                Outcome.FAILURE if refused else Outcome.SUCCESS,
                payload,
                "refused" if refused else None,
            )
        run.absorb(apply(TripSaga, inst, event, now))
    raise AssertionError("the trip did not end")


def test_a_small_trip_skips_the_fraud_check_and_the_approval() -> None:
    run = _trip(FRAUD_CHECK_ABOVE_CENTS)
    assert run.instance.status is SagaStatus.COMPLETED
    assert set(run.instance.skipped_steps) == {"fraud_check", "manager_approval"}
    assert run.kinds.count(HistoryKind.STEP_SKIPPED.value) == 2
    assert run.commands == Counter(
        {
            ("book_flight", "forward"): 1,
            ("book_hotel", "forward"): 1,
            ("rent_car", "forward"): 1,
            ("issue_tickets", "forward"): 1,
            ("remind_traveller", "forward"): 1,
        }
    )
    points = points_for(FRAUD_CHECK_ABOVE_CENTS)
    assert run.children == [
        (
            "loyalty_award",
            {"trip_id": "trip-1", "customer_id": "cust-1", "points": points, "balance": None},
        )
    ]
    assert run.instance.data["points"] == points
    # The reminder timer fires a day before departure, not before.
    assert run.timer_fired_at == DEPARTS - timedelta(days=1)
    assert (run.instance.data["flight_ref"], run.instance.data["ticket_ref"]) == ("F-1", "T-1")


def test_an_expensive_trip_is_screened_and_waits_for_the_managers_approval() -> None:
    run = _trip(APPROVAL_ABOVE_CENTS + 1)
    assert run.instance.status is SagaStatus.COMPLETED
    assert run.instance.skipped_steps == ()
    assert run.commands[("fraud_check", "forward")] == 1
    assert HistoryKind.SIGNAL_RECEIVED.value in run.kinds
    assert (run.instance.data["approved_by"], run.instance.data["fraud_score"]) == ("mia", 7)


def test_a_screened_trip_that_is_not_approved_needs_no_signal_below_the_approval_limit() -> None:
    run = _trip(FRAUD_CHECK_ABOVE_CENTS + 1)
    assert run.instance.status is SagaStatus.COMPLETED
    assert run.instance.skipped_steps == ("manager_approval",)
    assert HistoryKind.SIGNAL_RECEIVED.value not in run.kinds


def test_a_sold_out_flight_cancels_the_hotel_and_the_car_and_awards_nothing() -> None:
    run = _trip(100_000, failing=("book_flight",))
    assert run.instance.status is SagaStatus.COMPENSATED
    compensations = {step for (step, purpose) in run.commands if purpose != "forward"}
    assert compensations == {"book_hotel", "rent_car"}
    assert run.children == []


def test_refused_tickets_revoke_the_points_and_cancel_every_booking() -> None:
    run = _trip(FRAUD_CHECK_ABOVE_CENTS + 1, failing=("issue_tickets",))
    assert run.instance.status is SagaStatus.COMPENSATED
    assert [saga_type for saga_type, _ in run.children] == ["loyalty_award", "loyalty_revoke"]
    undone = {step for (step, purpose) in run.commands if purpose != "forward"}
    assert undone == {"book_flight", "book_hotel", "rent_car"}
    assert run.commands[("remind_traveller", "forward")] == 0


def test_the_fraud_check_refusing_unwinds_the_bookings() -> None:
    run = _trip(FRAUD_CHECK_ABOVE_CENTS + 1, failing=("fraud_check",))
    assert run.instance.status is SagaStatus.COMPENSATED
    assert run.children == []
    undone = {step for (step, purpose) in run.commands if purpose != "forward"}
    assert undone == {"book_flight", "book_hotel", "rent_car"}


def test_the_trip_registry_holds_the_loyalty_sagas_and_the_nightly_statement() -> None:
    registry = trip_registry()
    assert {"trip", "loyalty_award", "loyalty_revoke", "loyalty_statement"} <= set(registry.names())
    (nightly,) = LoyaltyStatementSaga.schedules
    assert (nightly.cron, nightly.catch_up) == ("0 2 * * *", "latest")
