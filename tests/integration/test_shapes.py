"""Saga shapes over real Kafka + PostgreSQL: a failure inside a parallel group, a skipped
conditional step, and a timer that survives a coordinator restart.

The coordinator runs in-process; the test plays the participants by reading their command
topics and publishing replies, so what each participant received can be counted exactly.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, ClassVar

from pydantic import BaseModel

from coordinator.app import Coordinator
from coordinator.config import DeadlineSettings, Settings
from coordinator.core.definition import (
    Compensation,
    Parallel,
    RetryPolicy,
    SagaDefinition,
    SagaRegistry,
    Step,
    Timer,
)
from coordinator.core.state import AwaitKind, HistoryKind, SagaInstance, SagaStatus
from coordinator.store.records import HistoryRecord
from service_sdk import Command, Envelope, Outcome, Topics, decode_envelope
from tests.support.outbox import outbox_sent
from tests.support.replies import participant_reply
from tests.support.waiting import eventually

WAIT_S = 30.0
PATIENT = timedelta(seconds=60)
ONCE = RetryPolicy(max_attempts=1)


class Trip(BaseModel):
    trip_id: str
    amount: int = 100


class Do(Command):
    message_type: ClassVar[str] = "shapes_test.do"


class Undo(Command):
    message_type: ClassVar[str] = "shapes_test.undo"


def _step(name: str, service: str, *, run_if: Any = None) -> Step[Trip]:
    return Step[Trip](
        name=name,
        service=service,
        command=Do,
        build=lambda d: Do(),
        compensation=Compensation[Trip](Undo, lambda d: Undo(), timeout=PATIENT),
        timeout=PATIENT,
        retry=ONCE,
        run_if=run_if,
    )


class GroupTrip(SagaDefinition[Trip]):
    """Pay, then book flight, hotel and car at once, then confirm."""

    name = "group_trip"
    data_model = Trip
    steps = (
        _step("pay", "payments"),
        Parallel[Trip](
            "book",
            (_step("flight", "flights"), _step("hotel", "hotels"), _step("car", "cars")),
        ),
        _step("confirm", "payments"),
    )


class CheckedTrip(SagaDefinition[Trip]):
    """A fraud check only above 1,000."""

    name = "checked_trip"
    data_model = Trip
    steps = (
        _step("fraud_check", "fraud", run_if=lambda d: d.amount > 1_000),
        _step("pay", "payments"),
    )


TIMER_DELAY = timedelta(seconds=8)


class RemindedTrip(SagaDefinition[Trip]):
    """Pay, wait (a durable timer), then remind."""

    name = "reminded_trip"
    data_model = Trip
    steps = (
        _step("pay", "payments"),
        Timer[Trip]("wait", delay=lambda d: TIMER_DELAY),
        _step("remind", "reminders"),
    )


REGISTRY = SagaRegistry([GroupTrip, CheckedTrip, RemindedTrip])


def _settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"deadlines": DeadlineSettings(scan_interval_s=0.2)})


class Participant:
    """One participant's command topic: everything it received, in order."""

    def __init__(self, reader: Any) -> None:
        self.reader = reader
        self.seen: list[Envelope] = []

    async def wait(self, message_type: str, count: int = 1) -> list[Envelope]:
        async def enough() -> list[Envelope] | None:
            found = [e for e in self.seen if e.message_type == message_type]
            if len(found) >= count:
                return found[:count]
            self.seen.extend(decode_envelope(r.value) for r in await self.reader.quiet(0.2))
            return None

        return await eventually(enough, timeout=WAIT_S, what=f"{count} x {message_type}")

    async def everything(self, coordinator: Coordinator) -> list[Envelope]:
        """All ``coordinator`` sent here so far (the outbox is drained first)."""
        await outbox_sent(coordinator.store)
        self.seen.extend(decode_envelope(r.value) for r in await self.reader.published())
        return self.seen


async def _saga(coordinator: Coordinator, saga_id: str) -> SagaInstance:
    async with coordinator.store.engine.connect() as conn:
        saga = await coordinator.store.select_saga(conn, saga_id)
    assert saga is not None
    return saga


async def _history(coordinator: Coordinator, saga_id: str) -> list[HistoryRecord]:
    async with coordinator.store.engine.connect() as conn:
        return await coordinator.store.select_history(conn, saga_id)


async def _status(coordinator: Coordinator, saga_id: str, status: SagaStatus) -> SagaInstance:
    async def reached() -> SagaInstance | None:
        saga = await _saga(coordinator, saga_id)
        return saga if saga.status is status else None

    return await eventually(reached, timeout=WAIT_S, what=f"{saga_id} {status.value}")


async def test_a_failure_inside_a_parallel_group_undoes_each_succeeded_sibling_once(
    coordinator_settings: Settings, running_coordinator: Any, topic_reader: Any, send_envelope: Any
) -> None:
    settings = _settings(coordinator_settings)
    topics = Topics(settings.kafka.topic_prefix)
    async with (
        running_coordinator(settings, REGISTRY) as coordinator,
        topic_reader(topics.commands("payments")) as payments_topic,
        topic_reader(topics.commands("flights")) as flights_topic,
        topic_reader(topics.commands("hotels")) as hotels_topic,
        topic_reader(topics.commands("cars")) as cars_topic,
    ):
        payments, flights, hotels, cars = (
            Participant(payments_topic),
            Participant(flights_topic),
            Participant(hotels_topic),
            Participant(cars_topic),
        )
        saga_id = await coordinator.client.start("group_trip", Trip(trip_id="t-1"), saga_id="g-1")
        (pay,) = await payments.wait(Do.message_type)
        await send_envelope(topics.replies, participant_reply(pay))
        # The three bookings go out together.
        (flight,) = await flights.wait(Do.message_type)
        (hotel,) = await hotels.wait(Do.message_type)
        (car,) = await cars.wait(Do.message_type)
        saga = await _saga(coordinator, saga_id)
        assert {e.step for e in saga.awaiting} <= {"flight", "hotel", "car"}
        # Flight and hotel succeed, the car fails for good.
        await send_envelope(topics.replies, participant_reply(flight))
        await send_envelope(topics.replies, participant_reply(hotel))

        async def both_done() -> bool:
            done = (await _saga(coordinator, saga_id)).completed_steps
            return {"flight", "hotel"} <= set(done)

        await eventually(both_done, timeout=WAIT_S, what="flight and hotel applied")
        await send_envelope(
            topics.replies, participant_reply(car, Outcome.FAILURE, error="no cars left")
        )
        # A redelivered success of the hotel changes nothing.
        await send_envelope(
            topics.replies,
            participant_reply(hotel).model_copy(update={"message_id": "hotel-again"}),
        )
        # The undos come one at a time: answer each as it arrives.
        for participant in (hotels, flights, payments):
            (undo,) = await participant.wait(Undo.message_type)
            await send_envelope(topics.replies, participant_reply(undo))
        saga = await _status(coordinator, saga_id, SagaStatus.COMPENSATED)
        assert saga.failure_reason == "car: no cars left"
        assert sorted(saga.compensated_steps) == ["flight", "hotel", "pay"]

        # At the participants: every succeeded booking undone exactly once, the car never.
        for participant, undos in ((flights, 1), (hotels, 1), (payments, 1), (cars, 0)):
            received = await participant.everything(coordinator)
            assert [e.message_type for e in received].count(Undo.message_type) == undos
            assert [e.message_type for e in received].count(Do.message_type) == 1
    history = await _history(coordinator, saga_id)
    assert [h.step for h in history if h.kind == HistoryKind.DUPLICATE_REPLY.value] == ["hotel"]


async def test_a_conditional_step_is_skipped_and_recorded(
    coordinator_settings: Settings, running_coordinator: Any, topic_reader: Any, send_envelope: Any
) -> None:
    settings = _settings(coordinator_settings)
    topics = Topics(settings.kafka.topic_prefix)
    async with (
        running_coordinator(settings, REGISTRY) as coordinator,
        topic_reader(topics.commands("payments")) as payments_topic,
        topic_reader(topics.commands("fraud")) as fraud_topic,
    ):
        payments, fraud = Participant(payments_topic), Participant(fraud_topic)
        small = await coordinator.client.start(
            "checked_trip", Trip(trip_id="t-small", amount=50), saga_id="small"
        )
        (pay,) = await payments.wait(Do.message_type)
        assert pay.saga_id == small
        await send_envelope(topics.replies, participant_reply(pay))
        saga = await _status(coordinator, small, SagaStatus.COMPLETED)
        assert saga.skipped_steps == ("fraud_check",)
        assert saga.completed_steps == ("pay",)
        assert await fraud.everything(coordinator) == [], "a skipped step sent its command"
    history = await _history(coordinator, small)
    assert [(h.kind, h.step) for h in history][:3] == [
        (HistoryKind.STARTED.value, None),
        (HistoryKind.STEP_SKIPPED.value, "fraud_check"),
        (HistoryKind.COMMAND_SENT.value, "pay"),
    ]


async def test_a_timer_survives_a_coordinator_restart_and_fires_once(
    coordinator_settings: Settings, running_coordinator: Any, topic_reader: Any, send_envelope: Any
) -> None:
    settings = _settings(coordinator_settings)
    topics = Topics(settings.kafka.topic_prefix)
    async with (
        topic_reader(topics.commands("payments")) as payments_topic,
        topic_reader(topics.commands("reminders")) as reminders_topic,
    ):
        payments, reminders = Participant(payments_topic), Participant(reminders_topic)
        async with running_coordinator(settings, REGISTRY) as first:
            saga_id = await first.client.start(
                "reminded_trip", Trip(trip_id="t-timer"), saga_id="timed"
            )
            (pay,) = await payments.wait(Do.message_type)
            await send_envelope(topics.replies, participant_reply(pay))

            async def timer_set() -> SagaInstance | None:
                saga = await _saga(first, saga_id)
                return saga if saga.current_step == "wait" else None

            waiting = await eventually(timer_set, timeout=WAIT_S, what="the timer set")
        # The first coordinator is gone; the timer lives in PostgreSQL only.
        (entry,) = waiting.awaiting
        assert entry.kind is AwaitKind.TIMER
        assert waiting.deadline_at == entry.deadline_at
        stopped = await _history(first, saga_id)
        assert HistoryKind.TIMER_FIRED.value not in [h.kind for h in stopped], (
            "the timer fired before the restart: make TIMER_DELAY longer"
        )
        async with running_coordinator(settings, REGISTRY) as second:
            (remind,) = await reminders.wait(Do.message_type)
            assert remind.saga_id == saga_id
            assert remind.occurred_at >= entry.deadline_at, "the timer fired early"
            await send_envelope(topics.replies, participant_reply(remind))
            await _status(second, saga_id, SagaStatus.COMPLETED)
            assert len(await reminders.everything(second)) == 1
            history = await _history(second, saga_id)
    assert [h.kind for h in history].count(HistoryKind.TIMER_FIRED.value) == 1


QUICK = timedelta(seconds=1.5)


def _quick(name: str, service: str, backoff: timedelta) -> Step[Trip]:
    return Step[Trip](
        name=name,
        service=service,
        command=Do,
        build=lambda d: Do(),
        compensation=Compensation[Trip](Undo, lambda d: Undo(), timeout=PATIENT),
        timeout=QUICK,
        retry=RetryPolicy(max_attempts=2, initial_backoff=backoff, max_backoff=backoff),
    )


class SilentGroupTrip(SagaDefinition[Trip]):
    """Two bookings at once whose participants never answer the first time."""

    name = "silent_group_trip"
    data_model = Trip
    # Both first deadlines fall together (one scan fires both); the hotel's second comes
    # seconds after the flight's, so the flight's success is in before the hotel gives up.
    steps = (
        Parallel[Trip](
            "book",
            (
                _quick("flight", "flights", timedelta(seconds=0.1)),
                _quick("hotel", "hotels", timedelta(seconds=4)),
            ),
        ),
    )


async def test_each_member_of_a_group_has_its_own_deadline_and_retries(
    coordinator_settings: Settings, running_coordinator: Any, topic_reader: Any, send_envelope: Any
) -> None:
    settings = _settings(coordinator_settings)
    topics = Topics(settings.kafka.topic_prefix)
    async with (
        running_coordinator(settings, SagaRegistry([SilentGroupTrip])) as coordinator,
        topic_reader(topics.commands("flights")) as flights_topic,
        topic_reader(topics.commands("hotels")) as hotels_topic,
    ):
        flights, hotels = Participant(flights_topic), Participant(hotels_topic)
        saga_id = await coordinator.client.start(
            "silent_group_trip", Trip(trip_id="t-silent"), saga_id="silent"
        )
        # Both members time out together: each is sent again, under its own id.
        flight_sends = await flights.wait(Do.message_type, 2)
        await send_envelope(topics.replies, participant_reply(flight_sends[1]))

        async def flight_done() -> bool:
            saga = await _saga(coordinator, saga_id)
            assert saga.status is SagaStatus.RUNNING, "the hotel gave up before the flight's reply"
            return "flight" in saga.completed_steps

        await eventually(flight_done, timeout=WAIT_S, what="the flight's success applied")
        # The hotel never answers: after its second attempt it is given up and undone, and
        # the flight, which succeeded, is compensated too.
        (hotel_undo,) = await hotels.wait(Undo.message_type)
        hotel_sends = [e for e in hotels.seen if e.message_type == Do.message_type]
        assert [e.attempt for e in hotel_sends] == [1, 2]
        assert hotel_undo.compensates == hotel_sends[0].command_id  # it may still run: fenced
        await send_envelope(topics.replies, participant_reply(hotel_undo, payload={"fenced": True}))
        (flight_undo,) = await flights.wait(Undo.message_type)
        assert flight_undo.compensates is None  # it succeeded: an ordinary compensation
        await send_envelope(topics.replies, participant_reply(flight_undo))
        saga = await _status(coordinator, saga_id, SagaStatus.COMPENSATED)
        assert saga.failure_reason == "hotel: no reply after 2 attempts"
        assert sorted(saga.compensated_steps) == ["flight", "hotel"]
        assert [e.attempt for e in flight_sends] == [1, 2]
        assert len({e.command_id for e in flight_sends}) == 1
        for participant in (flights, hotels):
            received = await participant.everything(coordinator)
            assert [e.message_type for e in received].count(Undo.message_type) == 1
    history = await _history(coordinator, saga_id)
    missed = [h for h in history if h.kind == HistoryKind.DEADLINE_MISSED.value]
    assert sorted(h.step or "" for h in missed) == ["flight", "hotel", "hotel"]
    # The first deadlines of both members fell together: one scan fired both.
    first_flight, first_hotel = (
        next(h for h in missed if h.step == s) for s in ("flight", "hotel")
    )
    assert first_flight.at == first_hotel.at
