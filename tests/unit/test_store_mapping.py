"""The pure mapping between SagaInstance and saga_instance rows (no database)."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from coordinator.core.state import TERMINAL_STATUSES, SagaInstance, SagaStatus
from coordinator.store.saga_store import saga_from_row, saga_to_row, saga_update_row
from coordinator.store.schema import saga_instance

NOW = datetime(2026, 3, 1, 12, 0, 0, 500, tzinfo=UTC)


def instance(**changes: object) -> SagaInstance:
    base = SagaInstance(
        saga_id="s-1",
        saga_type="order",
        definition_version=2,
        status=SagaStatus.RUNNING,
        data={"order_id": "o-1", "items": [{"sku": "A", "qty": 2}]},
        created_at=NOW,
        updated_at=NOW + timedelta(seconds=1),
        current_step="pay",
        command_id="c-1",
        attempt=3,
        deadline_at=NOW + timedelta(seconds=30),
        completed_steps=("reserve",),
        compensated_steps=(),
        failure_reason=None,
        traceparent="00-abc-def-01",
        version=7,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_row_has_a_value_for_every_column_but_version() -> None:
    row = saga_to_row(instance())

    assert set(row) == {c.name for c in saga_instance.columns} - {"version"}


def test_row_round_trips_to_the_same_instance() -> None:
    original = instance(compensated_steps=("b", "a"), failure_reason="declined")

    assert saga_from_row({**saga_to_row(original), "version": 7}) == original


def test_steps_become_lists_and_status_its_string_value() -> None:
    row = saga_to_row(instance(completed_steps=("a", "b"), status=SagaStatus.COMPENSATING))

    assert row["completed_steps"] == ["a", "b"]
    assert row["compensated_steps"] == []
    assert row["status"] == "COMPENSATING"
    assert type(row["status"]) is str


@pytest.mark.parametrize("status", list(SagaStatus))
def test_completed_at_is_set_only_for_terminal_statuses(status: SagaStatus) -> None:
    row = saga_to_row(instance(status=status))

    expected = NOW + timedelta(seconds=1) if status in TERMINAL_STATUSES else None
    assert row["completed_at"] == expected


@pytest.mark.parametrize("field", ["created_at", "updated_at", "deadline_at"])
def test_naive_datetimes_are_refused(field: str) -> None:
    naive = datetime(2026, 3, 1, 12, 0)  # noqa: DTZ001 - the point of the test

    with pytest.raises(ValueError, match=field):
        saga_to_row(instance(**{field: naive}))


def test_other_time_zones_are_accepted() -> None:
    cet = timezone(timedelta(hours=1))

    row = saga_to_row(instance(deadline_at=datetime(2026, 3, 1, 13, 0, tzinfo=cet)))

    assert row["deadline_at"] == datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_unknown_status_in_a_row_is_an_error() -> None:
    row = {**saga_to_row(instance()), "version": 1, "status": "PAUSED"}

    with pytest.raises(ValueError, match="PAUSED"):
        saga_from_row(row)


def test_update_row_is_json_with_the_read_version() -> None:
    update = saga_update_row(instance(deadline_at=None))

    assert json.loads(json.dumps(update)) == update
    assert update["saga_id"] == "s-1"
    assert update["read_version"] == 7
    assert update["deadline_at"] is None
    assert datetime.fromisoformat(update["updated_at"]) == NOW + timedelta(seconds=1)
    assert update["completed_steps"] == ["reserve"]
    assert "saga_type" not in update
    assert "created_at" not in update


def test_epoch_is_saved_and_read_back() -> None:
    original = instance(epoch=3)

    assert saga_to_row(original)["epoch"] == 3
    assert saga_update_row(original)["epoch"] == 3
    assert saga_from_row({**saga_to_row(original), "version": 7}) == original
