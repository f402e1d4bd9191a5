"""The new instance fields of the saga shapes survive the row mapping (no database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from coordinator.core.state import (
    Awaited,
    AwaitKind,
    PendingSignal,
    SagaInstance,
    SagaStatus,
)
from coordinator.store.saga_store import saga_from_row, saga_to_row, saga_update_row

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def shaped() -> SagaInstance:
    return SagaInstance(
        saga_id="s-1",
        saga_type="trip",
        definition_version=1,
        status=SagaStatus.RUNNING,
        data={},
        created_at=NOW,
        updated_at=NOW,
        awaiting=(
            Awaited("book_flight", "c-1", 2, NOW + timedelta(seconds=9), "flights", NOW),
            Awaited("book_hotel", "c-2", 1, NOW + timedelta(seconds=5), "hotels"),
        ),
        current_step="book_hotel",
        command_id="c-2",
        attempt=1,
        deadline_at=NOW + timedelta(seconds=5),
        service="hotels",
        stage=2,
        skipped_steps=("check_fraud",),
        pending_signals=(PendingSignal("sig-1", "approved", {"manager": "ann"}),),
        parent_saga_id="parent-1",
        parent_step="loyalty",
        version=3,
    )


def test_the_shape_fields_round_trip() -> None:
    original = shaped()
    row = saga_to_row(original)
    assert row["awaiting"][0]["picked_up_at"] == NOW.isoformat()
    assert row["skipped_steps"] == ["check_fraud"]
    assert saga_from_row({**row, "version": 3}) == original


def test_an_update_carries_what_a_transition_changes_but_never_the_parent() -> None:
    update = saga_update_row(shaped())
    assert {"awaiting", "stage", "skipped_steps", "pending_signals"} <= set(update)
    assert "parent_saga_id" not in update


def test_a_row_from_before_awaiting_existed_awaits_what_its_scalars_say() -> None:
    row = {
        **saga_to_row(shaped()),
        "awaiting": [],
        "status": "COMPENSATING",
        "current_step": "pay",
        "command_id": "undo-1",
        "in_doubt_step": "pay",
        "in_doubt_command_id": "fwd-1",
        "version": 1,
    }
    (entry,) = saga_from_row(row).awaiting
    assert (entry.step, entry.command_id, entry.kind, entry.compensates) == (
        "pay",
        "undo-1",
        AwaitKind.COMPENSATION,
        "fwd-1",
    )


def test_a_row_moved_on_by_an_older_coordinator_trusts_its_scalar_columns() -> None:
    # During a rolling deploy, a coordinator of the previous release advanced the saga: it
    # wrote current_step ... deadline_at but knows nothing of ``awaiting`` and ``stage``.
    older = SagaInstance(
        saga_id="s-2",
        saga_type="order",
        definition_version=1,
        status=SagaStatus.RUNNING,
        data={},
        created_at=NOW,
        updated_at=NOW,
        current_step="reserve",
        command_id="c-reserve",
        attempt=1,
        deadline_at=NOW + timedelta(seconds=30),
    )
    row = {
        **saga_to_row(older),
        "current_step": "charge",
        "command_id": "c-charge",
        "deadline_at": NOW + timedelta(seconds=60),
        "completed_steps": ["reserve"],
        "version": 2,
    }
    loaded = saga_from_row(row)
    (entry,) = loaded.awaiting
    assert (entry.step, entry.command_id, entry.deadline_at) == (
        "charge",
        "c-charge",
        NOW + timedelta(seconds=60),
    )
    assert loaded.stage == 1
