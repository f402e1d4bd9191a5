"""The end notice of a child saga: the reply its parent applies (pure: no database)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from coordinator.core.state import SagaInstance, SagaStatus
from coordinator.store.children import child_end_message
from service_sdk.contract import Header, MessageKind, Outcome, Topics, decode_envelope

NOW = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
CHILD = SagaInstance(
    saga_id="child-1",
    saga_type="award_points",
    definition_version=1,
    status=SagaStatus.COMPLETED,
    data={"customer": "c", "amount": 5, "points": 9},
    created_at=NOW,
    updated_at=NOW,
    traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    parent_saga_id="parent-1",
    parent_step="points",
)


def test_a_completed_child_answers_success_with_its_final_data() -> None:
    message = child_end_message(Topics("t."), CHILD, "booking", 1, NOW)
    assert (message.topic, message.key) == ("t.saga.replies", b"parent-1")
    reply = decode_envelope(message.value)
    assert reply.kind is MessageKind.REPLY
    assert (reply.saga_id, reply.saga_type, reply.step) == ("parent-1", "booking", "points")
    assert (reply.command_id, reply.attempt) == ("child-1", 1)
    assert reply.outcome is Outcome.SUCCESS
    assert reply.payload == CHILD.data
    assert reply.traceparent == CHILD.traceparent
    assert message.headers[Header.SAGA_ID] == "parent-1"
    assert message.message_id == reply.message_id


@pytest.mark.parametrize("status", [SagaStatus.COMPENSATED, SagaStatus.FAILED])
def test_a_compensated_or_failed_child_answers_failure_with_its_reason(status: SagaStatus) -> None:
    child = replace(CHILD, status=status, failure_reason="customer blocked")
    reply = decode_envelope(child_end_message(Topics(), child, "booking", 2, NOW).value)
    assert reply.outcome is Outcome.FAILURE
    assert reply.error == "customer blocked"
    assert reply.attempt == 2
    assert reply.payload == {"status": status.value}


def test_the_notice_id_is_the_same_for_the_same_end_and_differs_for_another() -> None:
    first = child_end_message(Topics(), CHILD, "booking", 1, NOW)
    again = child_end_message(Topics(), CHILD, "booking", 1, NOW)
    resent = child_end_message(Topics(), CHILD, "booking", 2, NOW)
    retried = child_end_message(
        Topics(), replace(CHILD, status=SagaStatus.COMPENSATED, epoch=1), "booking", 1, NOW
    )
    assert first.message_id == again.message_id  # a retried transaction: the inbox drops it
    assert len({first.message_id, resent.message_id, retried.message_id}) == 3


def test_a_saga_without_a_parent_has_no_notice() -> None:
    with pytest.raises(ValueError, match="no parent"):
        child_end_message(Topics(), replace(CHILD, parent_saga_id=None), "booking", 1, NOW)
