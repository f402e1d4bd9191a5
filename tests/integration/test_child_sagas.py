"""Child sagas over real Kafka + PostgreSQL: ``booking`` reserves, runs the child saga
``award_points``, then confirms. A child that completes hands its data to the parent; a child
that fails makes the parent compensate its earlier steps once; a completed child is undone by
its compensation saga (``revoke_points``) when a later step of the parent fails. Parent and
child link to each other.

The test plays the ``ledger`` and ``points`` participants.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from coordinator.app import Coordinator
from coordinator.config import Settings
from coordinator.core.state import (
    ChildStart,
    SagaInstance,
    SagaStatus,
    Transition,
    command_id_for,
)
from coordinator.store.persist import persist
from service_sdk import Envelope, Outcome, Topics, decode_envelope
from tests.support.offsets import committed_to_end
from tests.support.outbox import outbox_sent
from tests.support.replies import participant_reply
from tests.support.shaped_sagas import Booking, booking_registry
from tests.support.waiting import eventually

ORDER = Booking(order_id="o-7", amount=250)


class Participant:
    """The test as one participant service: reads its commands, answers when told."""

    def __init__(self, reader: Any, send: Callable[..., Any], topics: Topics) -> None:
        self._reader = reader
        self._send = send
        self._topics = topics
        self._pending: list[Envelope] = []
        self.seen: list[Envelope] = []

    async def answer(
        self,
        message_type: str,
        outcome: Outcome = Outcome.SUCCESS,
        payload: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> Envelope:
        """Answer the next command, which must be of ``message_type``."""
        if not self._pending:
            self._pending.extend(await self._reader.envelopes(1))
        command = self._pending.pop(0)
        self.seen.append(command)
        assert command.message_type == message_type, (command.message_type, command.saga_id)
        reply = participant_reply(command, outcome, payload, error=error)
        await self._send(self._topics.replies, reply)
        return command


async def _saga(coordinator: Coordinator, saga_id: str) -> SagaInstance:
    async with coordinator.store.engine.connect() as conn:
        saga = await coordinator.store.select_saga(conn, saga_id)
    assert saga is not None, f"no saga {saga_id}"
    return saga


async def _status(coordinator: Coordinator, saga_id: str, status: SagaStatus) -> SagaInstance:
    async def reached() -> SagaInstance:
        saga = await _saga(coordinator, saga_id)
        assert saga.status is status, (saga.status, saga.current_step, saga.failure_reason)
        return saga

    return await eventually(reached, what=f"{saga_id} {status.value}")


async def _end_notices(coordinator: Coordinator, replies: Any, child_id: str) -> list[Envelope]:
    """The replies the child's ends sent its parent (the command the parent awaits is the
    child's id), oldest first, once everything written so far is published."""
    await outbox_sent(coordinator.store)
    envelopes = [decode_envelope(record.value) for record in await replies.published()]
    return [e for e in envelopes if e.command_id == child_id]


def _child_id(parent: str, step: str, *, compensation: bool = False) -> str:
    return command_id_for(parent, step, compensation=compensation)


async def test_a_child_that_completes_hands_its_data_to_the_parent(
    coordinator_settings: Settings,
    running_coordinator: Any,
    topic_reader: Any,
    send_envelope: Any,
    kafka_bootstrap: str,
) -> None:
    topics = Topics(coordinator_settings.kafka.topic_prefix)
    async with (
        running_coordinator(coordinator_settings, booking_registry()) as coordinator,
        topic_reader(topics.commands("ledger")) as ledger_topic,
        topic_reader(topics.commands("points")) as points_topic,
        topic_reader(topics.replies) as replies,
    ):
        ledger = Participant(ledger_topic, send_envelope, topics)
        points = Participant(points_topic, send_envelope, topics)
        parent_id = await coordinator.client.start("booking", ORDER, saga_id="trip-1")
        await ledger.answer("ledger.reserve")
        award = await points.answer("points.award", payload={"points": 25})
        child_id = _child_id(parent_id, "points")
        assert award.saga_id == child_id
        assert award.payload == {"customer": "o-7", "amount": 250}
        await ledger.answer("ledger.confirm")
        parent = await _status(coordinator, parent_id, SagaStatus.COMPLETED)
        child = await _saga(coordinator, child_id)
        timeline = await coordinator.operator.show(parent_id)
        child_view = await coordinator.operator.show(child_id)
        # The parent starts the ended child again (as on a deadline): a duplicate start, which
        # sends the child's end once more and changes nothing else.
        again = Transition(
            parent,
            changed=False,
            child_starts=(
                ChildStart("award_points", child_id, award.payload, parent_id, "points", 2),
            ),
        )
        async with coordinator.store.engine.begin() as conn:
            await persist(
                coordinator.store,
                conn,
                topics,
                [],
                [again],
                datetime.now(UTC),
                registry=coordinator.registry,
            )
        ends = await _end_notices(coordinator, replies, child_id)
        assert [(e.attempt, e.outcome, e.payload["points"]) for e in ends] == [
            (1, Outcome.SUCCESS, 25),
            (2, Outcome.SUCCESS, 25),
        ]
        await outbox_sent(coordinator.store)
        await committed_to_end(kafka_bootstrap, coordinator_settings.kafka.group_id, topics.replies)
        assert (await _saga(coordinator, parent_id)).version == parent.version
        assert (await _saga(coordinator, child_id)).version == child.version
    assert parent.data["points"] == 25
    assert (child.status, child.saga_type) == (SagaStatus.COMPLETED, "award_points")
    assert (child.parent_saga_id, child.parent_step) == (parent_id, "points")
    assert child.traceparent == parent.traceparent  # one trace for the family
    assert [c.saga_id for c in timeline.children] == [child_id]
    assert child_view.children == ()
    assert timeline.as_dict()["children"][0]["status"] == "COMPLETED"


async def test_a_failing_child_makes_the_parent_compensate_its_earlier_steps_once(
    coordinator_settings: Settings,
    running_coordinator: Any,
    topic_reader: Any,
    send_envelope: Any,
) -> None:
    topics = Topics(coordinator_settings.kafka.topic_prefix)
    async with (
        running_coordinator(coordinator_settings, booking_registry()) as coordinator,
        topic_reader(topics.commands("ledger")) as ledger_topic,
        topic_reader(topics.commands("points")) as points_topic,
    ):
        ledger = Participant(ledger_topic, send_envelope, topics)
        points = Participant(points_topic, send_envelope, topics)
        parent_id = await coordinator.client.start("booking", ORDER, saga_id="trip-2")
        await ledger.answer("ledger.reserve")
        await points.answer("points.award", Outcome.FAILURE, error="customer blocked")
        release = await ledger.answer("ledger.release")
        parent = await _status(coordinator, parent_id, SagaStatus.COMPENSATED)
        child = await _saga(coordinator, _child_id(parent_id, "points"))
        # Everything sent has been answered: nothing more may reach the ledger.
        assert await ledger_topic.published() == []
    assert release.saga_id == parent_id
    assert child.status is SagaStatus.COMPENSATED
    assert "customer blocked" in (parent.failure_reason or "")
    assert parent.compensated_steps == ("reserve",)
    assert [c.message_type for c in ledger.seen].count("ledger.release") == 1


async def test_a_completed_child_is_undone_by_its_compensation_saga(
    coordinator_settings: Settings,
    running_coordinator: Any,
    topic_reader: Any,
    send_envelope: Any,
) -> None:
    topics = Topics(coordinator_settings.kafka.topic_prefix)
    async with (
        running_coordinator(coordinator_settings, booking_registry()) as coordinator,
        topic_reader(topics.commands("ledger")) as ledger_topic,
        topic_reader(topics.commands("points")) as points_topic,
    ):
        ledger = Participant(ledger_topic, send_envelope, topics)
        points = Participant(points_topic, send_envelope, topics)
        parent_id = await coordinator.client.start("booking", ORDER, saga_id="trip-3")
        await ledger.answer("ledger.reserve")
        await points.answer("points.award", payload={"points": 40})
        await ledger.answer("ledger.confirm", Outcome.FAILURE, error="sold out")
        revoke = await points.answer("points.revoke")
        await ledger.answer("ledger.release")
        parent = await _status(coordinator, parent_id, SagaStatus.COMPENSATED)
        undo_id = _child_id(parent_id, "points", compensation=True)
        undo = await _saga(coordinator, undo_id)
        child = await _saga(coordinator, _child_id(parent_id, "points"))
        timeline = await coordinator.operator.show(parent_id)
        assert await points_topic.published() == []
    assert revoke.saga_id == undo_id
    assert revoke.payload == {"customer": "o-7", "amount": 250}
    assert (undo.saga_type, undo.status) == ("revoke_points", SagaStatus.COMPLETED)
    assert (undo.parent_saga_id, undo.parent_step) == (parent_id, "points")
    assert child.status is SagaStatus.COMPLETED  # settled: undone by another saga
    assert parent.compensated_steps == ("points", "reserve")
    assert {c.saga_type for c in timeline.children} == {"award_points", "revoke_points"}


async def test_aborting_the_parent_awaits_the_running_child_then_undoes_it(
    coordinator_settings: Settings,
    running_coordinator: Any,
    topic_reader: Any,
    send_envelope: Any,
) -> None:
    topics = Topics(coordinator_settings.kafka.topic_prefix)
    async with (
        running_coordinator(coordinator_settings, booking_registry()) as coordinator,
        topic_reader(topics.commands("ledger")) as ledger_topic,
        topic_reader(topics.commands("points")) as points_topic,
    ):
        ledger = Participant(ledger_topic, send_envelope, topics)
        points = Participant(points_topic, send_envelope, topics)
        parent_id = await coordinator.client.start("booking", ORDER, saga_id="trip-4")
        await ledger.answer("ledger.reserve")
        child_id = _child_id(parent_id, "points")
        await eventually(lambda: _saga(coordinator, child_id), what="the child started")
        aborted = await coordinator.operator.abort(parent_id, actor="ops", reason="cancelled")
        assert aborted.status_after is SagaStatus.COMPENSATING
        # The child cannot be fenced: its end is awaited, then undone by revoke_points.
        await points.answer("points.award", payload={"points": 5})
        revoke = await points.answer("points.revoke")
        await ledger.answer("ledger.release")
        parent = await _status(coordinator, parent_id, SagaStatus.COMPENSATED)
    assert revoke.saga_id == _child_id(parent_id, "points", compensation=True)
    assert revoke.payload == {"customer": "o-7", "amount": 250}
    assert parent.compensated_steps[-1] == "reserve"


async def test_aborting_a_child_makes_its_parent_compensate(
    coordinator_settings: Settings,
    running_coordinator: Any,
    topic_reader: Any,
    send_envelope: Any,
) -> None:
    topics = Topics(coordinator_settings.kafka.topic_prefix)
    async with (
        running_coordinator(coordinator_settings, booking_registry()) as coordinator,
        topic_reader(topics.commands("ledger")) as ledger_topic,
        topic_reader(topics.commands("points")) as points_topic,
    ):
        ledger = Participant(ledger_topic, send_envelope, topics)
        points = Participant(points_topic, send_envelope, topics)
        parent_id = await coordinator.client.start("booking", ORDER, saga_id="trip-5")
        await ledger.answer("ledger.reserve")
        child_id = _child_id(parent_id, "points")
        await eventually(lambda: _saga(coordinator, child_id), what="the child started")
        await coordinator.operator.abort(child_id, actor="ops", reason="fraud suspected")
        # The award in flight is fenced (it has no compensation); the participant never ran it.
        await points.answer("points.award", Outcome.FAILURE, error="too late")
        fence = await points.answer("saga.fence", payload={"fenced": True})
        await ledger.answer("ledger.release")
        parent = await _status(coordinator, parent_id, SagaStatus.COMPENSATED)
        child = await _saga(coordinator, child_id)
    assert fence.saga_id == child_id
    assert child.status is SagaStatus.COMPENSATED
    assert "fraud suspected" in (parent.failure_reason or "")


async def test_a_child_whose_data_fails_its_model_fails_the_parents_step(
    coordinator_settings: Settings,
    running_coordinator: Any,
    topic_reader: Any,
    send_envelope: Any,
) -> None:
    topics = Topics(coordinator_settings.kafka.topic_prefix)
    async with (
        running_coordinator(coordinator_settings, booking_registry()) as coordinator,
        topic_reader(topics.commands("ledger")) as ledger_topic,
    ):
        ledger = Participant(ledger_topic, send_envelope, topics)
        negative = Booking(order_id="o-8", amount=-5)  # award_points wants amount >= 0
        parent_id = await coordinator.client.start("booking", negative, saga_id="trip-6")
        await ledger.answer("ledger.reserve")
        await ledger.answer("ledger.release")
        parent = await _status(coordinator, parent_id, SagaStatus.COMPENSATED)
        async with coordinator.store.engine.connect() as conn:
            never = await coordinator.store.select_saga(conn, _child_id(parent_id, "points"))
    assert never is None
    assert "cannot start" in (parent.failure_reason or "")
    assert parent.compensated_steps == ("reserve",)
