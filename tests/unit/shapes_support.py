"""Definitions and drivers shared by the unit tests of the saga shapes (issue 14)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from pydantic import BaseModel

from coordinator.core.definition import (
    ChildCompensation,
    ChildSaga,
    Compensation,
    Parallel,
    RetryPolicy,
    SagaDefinition,
    Step,
    Timer,
    WaitForSignal,
)
from coordinator.core.machine import apply, start_saga
from coordinator.core.state import (
    ReplyReceived,
    SagaInput,
    SagaInstance,
    StartSaga,
    Transition,
    command_id_for,
)
from service_sdk import Command, Outcome

NOW = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
SAGA_ID = "trip-1"


class Trip(BaseModel):
    amount: int = 100
    flight: str | None = None
    hotel: str | None = None
    car: str | None = None
    approved_by: str | None = None
    points: int = 0


class Act(Command):
    """Every forward command of these tests: which step sent it is in the envelope."""

    message_type: ClassVar[str] = "shapes.act"


class Undo(Command):
    message_type: ClassVar[str] = "shapes.undo"


class Approval(BaseModel):
    manager: str


FAST = RetryPolicy(max_attempts=2, initial_backoff=timedelta(0), jitter=0.0)


def step(
    name: str, *, undo: bool = True, run_if: Any = None, field: str | None = None
) -> Step[Trip]:
    """A step whose success sets ``field`` (when given) to the reply's ``ref``."""

    def fold(d: Trip, reply: Any) -> Trip:
        return d.model_copy(update={field: reply["ref"]}) if field else d

    return Step[Trip](
        name=name,
        service=name.replace("_", "-"),
        command=Act,
        build=lambda d: Act(),
        on_success=fold,
        compensation=Compensation[Trip](Undo, lambda d: Undo(), retry=FAST) if undo else None,
        timeout=timedelta(seconds=10),
        retry=FAST,
        run_if=run_if,
    )


class TripSaga(SagaDefinition[Trip]):
    """Every shape in one saga (the example of issue 14, in miniature)."""

    name = "trip"
    data_model = Trip
    steps = (
        step("check_fraud", undo=False, run_if=lambda d: d.amount > 1000),
        Parallel[Trip](
            "book",
            (
                step("book_flight", field="flight"),
                step("book_hotel", field="hotel"),
                step("book_car", undo=False, field="car"),
            ),
        ),
        WaitForSignal[Trip](
            "approval",
            signal="approved",
            timeout=timedelta(hours=1),
            payload_model=Approval,
            on_signal=lambda d, a: d.model_copy(update={"approved_by": a.manager}),
            run_if=lambda d: d.amount > 500,
        ),
        ChildSaga[Trip](
            "loyalty",
            saga_type="points",
            build=lambda d: {"amount": d.amount},
            on_success=lambda d, child: d.model_copy(update={"points": child["points"]}),
            compensation=ChildCompensation[Trip]("revoke_points", lambda d: {"points": d.points}),
        ),
        Timer[Trip]("reminder", delay=lambda d: timedelta(hours=24)),
        step("send_tickets", undo=False),
    )


def fwd(step: str, epoch: int = 0) -> str:
    return command_id_for(SAGA_ID, step, compensation=False, epoch=epoch)


def comp(step: str, epoch: int = 0) -> str:
    return command_id_for(SAGA_ID, step, compensation=True, epoch=epoch)


def begin(definition: type[SagaDefinition[Any]] = TripSaga, **data: Any) -> Transition:
    return start_saga(definition, SAGA_ID, StartSaga("m-start", data), NOW)


def run(
    inst: SagaInstance,
    event: SagaInput,
    at: datetime = NOW,
    definition: type[SagaDefinition[Any]] = TripSaga,
) -> Transition:
    return apply(definition, inst, event, at)


def reply(
    inst: SagaInstance,
    step: str,
    outcome: Outcome = Outcome.SUCCESS,
    payload: dict[str, Any] | None = None,
    *,
    message_id: str | None = None,
    error: str | None = None,
) -> ReplyReceived:
    """A reply to what the saga awaits for ``step`` (its latest attempt)."""
    entry = next(e for e in inst.awaiting if e.step == step)
    if payload is None:
        payload = {"ref": f"{step}-ref"} if outcome is Outcome.SUCCESS else {}
    return ReplyReceived(
        message_id or f"m-{step}-{entry.attempt}-{outcome.value}",
        step,
        entry.command_id,
        entry.attempt,
        outcome,
        payload,
        error,
    )


def awaited_steps(inst: SagaInstance) -> set[str]:
    return {entry.step for entry in inst.awaiting}
