"""Small sagas with a signal wait and with child sagas, for the integration tests.

Participants are played by the test (each command's service is the first part of its message
type): ``ledger`` reserves, releases and confirms; ``points`` awards and revokes points.

- :func:`approval_saga`: reserve (undone by release), wait for the ``approval`` signal
  (payload :class:`Approval`, folded into ``approved_by``), confirm.
- :func:`booking_registry`: ``booking`` reserves, runs the child saga ``award_points`` (its
  COMPLETED undone by the saga ``revoke_points``), then confirms.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, ClassVar, Literal

from pydantic import BaseModel

from coordinator.core.definition import (
    ChildCompensation,
    ChildSaga,
    Compensation,
    RetryPolicy,
    SagaDefinition,
    SagaRegistry,
    Step,
    WaitForSignal,
)
from service_sdk import Command

__all__ = [
    "Approval",
    "Booking",
    "Points",
    "approval_saga",
    "booking_registry",
]


class Booking(BaseModel):
    """The data of the approval and booking sagas."""

    order_id: str
    amount: int = 100
    approved_by: str | None = None
    points: int | None = None


class Approval(BaseModel):
    """The payload of the ``approval`` signal."""

    approved_by: str


class Points(BaseModel):
    """The data of ``award_points`` and ``revoke_points``."""

    customer: str
    amount: int
    points: int | None = None


class Reserve(Command):
    """Reserve the order's amount."""

    message_type: ClassVar[str] = "ledger.reserve"
    order_id: str


class Release(Command):
    """Release the reservation."""

    message_type: ClassVar[str] = "ledger.release"
    order_id: str


class Confirm(Command):
    """Confirm the order."""

    message_type: ClassVar[str] = "ledger.confirm"
    order_id: str


class Award(Command):
    """Award points."""

    message_type: ClassVar[str] = "points.award"
    customer: str
    amount: int


class Revoke(Command):
    """Take awarded points back."""

    message_type: ClassVar[str] = "points.revoke"
    customer: str
    amount: int


_ONCE = RetryPolicy(max_attempts=1)


def _reserve() -> Step[Booking]:
    return Step[Booking](
        name="reserve",
        service="ledger",
        command=Reserve,
        build=lambda d: Reserve(order_id=d.order_id),
        compensation=Compensation[Booking](
            command=Release, build=lambda d: Release(order_id=d.order_id)
        ),
        timeout=timedelta(minutes=5),
        retry=_ONCE,
    )


def _confirm() -> Step[Booking]:
    return Step[Booking](
        name="confirm",
        service="ledger",
        command=Confirm,
        build=lambda d: Confirm(order_id=d.order_id),
        timeout=timedelta(minutes=5),
        retry=_ONCE,
    )


def _approved(data: Booking, approval: Approval) -> Booking:
    return data.model_copy(update={"approved_by": approval.approved_by})


def approval_saga(
    name: str = "approval_flow",
    *,
    version: int = 1,
    timeout: timedelta = timedelta(minutes=5),
    on_timeout: Literal["fail", "continue"] = "fail",
) -> type[SagaDefinition[Booking]]:
    """reserve, wait for ``approval`` (``timeout``, then ``on_timeout``), confirm."""
    attributes: dict[str, Any] = {
        "name": name,
        "version": version,
        "data_model": Booking,
        "steps": (
            _reserve(),
            WaitForSignal[Booking](
                name="approve",
                signal="approval",
                timeout=timeout,
                payload_model=Approval,
                on_signal=_approved,
                on_timeout=on_timeout,
            ),
            _confirm(),
        ),
    }
    return type("ApprovalSaga", (SagaDefinition,), attributes)


def _awarded(data: Points, reply: Any) -> Points:
    return data.model_copy(update={"points": reply["points"]})


class AwardPoints(SagaDefinition[Points]):
    """The child: one step at the points service."""

    name = "award_points"
    data_model = Points
    steps = (
        Step[Points](
            name="award",
            service="points",
            command=Award,
            build=lambda d: Award(customer=d.customer, amount=d.amount),
            on_success=_awarded,
            timeout=timedelta(minutes=5),
            retry=_ONCE,
        ),
    )


class RevokePoints(SagaDefinition[Points]):
    """The saga that undoes a completed ``award_points``."""

    name = "revoke_points"
    data_model = Points
    steps = (
        Step[Points](
            name="revoke",
            service="points",
            command=Revoke,
            build=lambda d: Revoke(customer=d.customer, amount=d.amount),
            timeout=timedelta(minutes=5),
            retry=_ONCE,
        ),
    )


def _child_points(data: Booking, child: dict[str, Any]) -> Booking:
    return data.model_copy(update={"points": child["points"]})


class BookingSaga(SagaDefinition[Booking]):
    """reserve, the ``award_points`` child (undone by ``revoke_points``), confirm."""

    name = "booking"
    data_model = Booking
    steps = (
        _reserve(),
        ChildSaga[Booking](
            name="points",
            saga_type="award_points",
            build=lambda d: {"customer": d.order_id, "amount": d.amount},
            on_success=_child_points,
            compensation=ChildCompensation[Booking](
                saga_type="revoke_points",
                # Built from the parent's data alone, like any compensation: the undo may
                # start for a child whose end the parent never folded in (an abort).
                build=lambda d: {"customer": d.order_id, "amount": d.amount},
            ),
            timeout=timedelta(minutes=5),
        ),
        _confirm(),
    )


def booking_registry() -> SagaRegistry:
    """``booking`` with its child ``award_points`` and the undo ``revoke_points``."""
    return SagaRegistry([BookingSaga, AwardPoints, RevokePoints])
