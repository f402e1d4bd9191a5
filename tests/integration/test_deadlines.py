"""Step deadlines, retries and late or stale replies over real Kafka + PostgreSQL.

The coordinator runs in-process with the order saga's steps re-timed: ``quick_order`` misses
deadlines within seconds, ``patient_order`` never does during a test. The test plays the
participants by reading their command topics and publishing replies, except where a real
:class:`~service_sdk.ServiceRunner` is the point.
"""

from __future__ import annotations

import itertools
import uuid
from dataclasses import replace
from datetime import timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.app import Coordinator
from coordinator.config import DeadlineSettings, Settings
from coordinator.core.definition import RetryPolicy, SagaDefinition, SagaRegistry, Step
from coordinator.core.state import HistoryKind, SagaInstance, SagaStatus
from coordinator.store.records import HistoryRecord
from saga_defs import OrderData, OrderSaga
from saga_defs.order import (
    ChargePayment,
    OrderItem,
    PaymentCharged,
    RefundPayment,
    ReleaseStock,
    ReserveStock,
    ScheduleShipment,
    ShipmentScheduled,
    StockReserved,
)
from service_sdk import (
    FENCE_MESSAGE_TYPE,
    CommandRejected,
    Envelope,
    HandlerContext,
    KafkaConfig,
    Outcome,
    Service,
    ServiceRunner,
    Topics,
    decode_envelope,
)
from tests.support.outbox import outbox_sent
from tests.support.replies import participant_reply
from tests.support.waiting import eventually

QUICK = timedelta(seconds=1.5)
PATIENT = timedelta(seconds=60)
RETRY = RetryPolicy(
    max_attempts=3, initial_backoff=timedelta(seconds=0.2), max_backoff=timedelta(seconds=1)
)
WAIT_S = 25.0
"""How long a test waits for something that should happen within a few seconds."""


def _timed(step: Step[Any], timeout: timedelta) -> Step[Any]:
    # Compensations stay patient: these tests are about the forward steps' deadlines.
    compensation = step.compensation
    if compensation is not None:
        compensation = replace(compensation, timeout=PATIENT, retry=RETRY)
    return replace(step, timeout=timeout, retry=RETRY, compensation=compensation)


class QuickOrderSaga(SagaDefinition[OrderData]):
    """The order saga with 1.5 s deadlines and three attempts per step."""

    name = "quick_order"
    data_model = OrderData
    steps = tuple(_timed(step, QUICK) for step in OrderSaga.steps)


class PatientOrderSaga(SagaDefinition[OrderData]):
    """The order saga with deadlines no test reaches: only replies move it."""

    name = "patient_order"
    data_model = OrderData
    steps = tuple(_timed(step, PATIENT) for step in OrderSaga.steps)


REGISTRY = SagaRegistry([QuickOrderSaga, PatientOrderSaga])

ORDER = OrderData(
    order_id="o-1",
    customer_id="c-1",
    items=(OrderItem(sku="sku-1", quantity=2),),
    amount_cents=1_250,
)


def _settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"deadlines": DeadlineSettings(scan_interval_s=0.2)})


class Fence:
    """The coordinator's fence command (no model: participants understand it built in)."""

    message_type = FENCE_MESSAGE_TYPE


class Feed:
    """Every envelope published to one topic, kept in arrival order as it is read."""

    def __init__(self, reader: Any) -> None:
        self.reader = reader
        self.seen: list[Envelope] = []

    async def poll(self, seconds: float = 0.2) -> None:
        self.seen.extend(decode_envelope(r.value) for r in await self.reader.quiet(seconds))

    async def read_published(self) -> None:
        """Read everything published to the topic so far."""
        self.seen.extend(decode_envelope(r.value) for r in await self.reader.published())

    async def settle(self, coordinator: Coordinator) -> None:
        """Read everything ``coordinator`` has sent to the topic so far, so that what is not
        in :attr:`seen` has not been sent (rather than not yet, or not within a while)."""
        await outbox_sent(coordinator.store)
        await self.read_published()

    async def wait(self, of_type: type[Any], count: int = 1) -> list[Envelope]:
        """The first ``count`` envelopes of a command type, waiting for them if needed."""
        message_type: str = of_type.message_type

        async def matching() -> list[Envelope] | None:
            found = [e for e in self.seen if e.message_type == message_type]
            if len(found) >= count:
                return found[:count]
            await self.poll()
            return None

        return await eventually(matching, timeout=WAIT_S, what=f"{count} x {message_type}")

    def count(self, of_type: type[Any]) -> int:
        message_type: str = of_type.message_type
        return sum(1 for e in self.seen if e.message_type == message_type)


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

    return await eventually(reached, timeout=WAIT_S, what=f"saga {saga_id} to be {status.value}")


def _entries(history: list[HistoryRecord], kind: HistoryKind, step: str) -> list[HistoryRecord]:
    return [h for h in history if h.kind == kind.value and h.step == step]


async def test_a_participant_that_never_answers_gets_three_sends_then_the_saga_compensates(
    coordinator_settings: Settings, running_coordinator: Any, topic_reader: Any, send_envelope: Any
) -> None:
    settings = _settings(coordinator_settings)
    topics = Topics(settings.kafka.topic_prefix)
    async with (
        running_coordinator(settings, REGISTRY) as coordinator,
        topic_reader(topics.commands("inventory")) as inventory_topic,
        topic_reader(topics.commands("payment")) as payment_topic,
        topic_reader(topics.commands("shipping")) as shipping_topic,
    ):
        inventory, payment, shipping = (
            Feed(inventory_topic),
            Feed(payment_topic),
            Feed(shipping_topic),
        )
        saga_id = await coordinator.client.start("quick_order", ORDER, saga_id="silent-shipping")
        (reserve,) = await inventory.wait(ReserveStock)
        await send_envelope(
            topics.replies, participant_reply(reserve, Outcome.SUCCESS, {"reservation_id": "r-1"})
        )
        (charge,) = await payment.wait(ChargePayment)
        await send_envelope(
            topics.replies, participant_reply(charge, Outcome.SUCCESS, {"charge_id": "ch-1"})
        )

        # Shipping never answers: the same command, three times, a deadline apart.
        sends = await shipping.wait(ScheduleShipment, 3)
        assert [s.attempt for s in sends] == [1, 2, 3]
        assert len({s.command_id for s in sends}) == 1
        assert sends[0].payload == sends[2].payload
        for earlier, later in itertools.pairwise(sends):
            assert later.occurred_at - earlier.occurred_at >= QUICK, "a deadline fired early"

        # The shipment may still happen: a fence names it first, and nothing is refunded or
        # released before the shipping service answers it.
        (fence,) = await shipping.wait(Fence)
        assert fence.compensates == sends[0].command_id
        await payment.settle(coordinator)
        assert payment.count(RefundPayment) == 0, "refunded before the shipment was fenced"
        await send_envelope(
            topics.replies, participant_reply(fence, Outcome.SUCCESS, {"fenced": True})
        )

        # Then the done steps are undone in reverse: payment first, inventory only after it.
        (refund,) = await payment.wait(RefundPayment)
        assert refund.compensates is None
        await inventory.settle(coordinator)
        assert inventory.count(ReleaseStock) == 0, "inventory was released before the refund"
        await send_envelope(topics.replies, participant_reply(refund, Outcome.SUCCESS, {}))
        (release,) = await inventory.wait(ReleaseStock)
        await send_envelope(topics.replies, participant_reply(release, Outcome.SUCCESS, {}))

        saga = await _status(coordinator, saga_id, SagaStatus.COMPENSATED)
        assert saga.failure_reason == "schedule_shipping: no reply after 3 attempts"
        assert (saga.completed_steps, saga.compensated_steps) == (
            ("reserve_inventory", "charge_payment"),
            ("schedule_shipping", "charge_payment", "reserve_inventory"),
        )
        assert (saga.current_step, saga.deadline_at) == (None, None)
        await shipping.settle(coordinator)
        assert shipping.count(ScheduleShipment) == 3, "a fourth attempt was sent"
        history = await _history(coordinator, saga_id)

    missed = _entries(history, HistoryKind.DEADLINE_MISSED, "schedule_shipping")
    assert [m.detail["attempt"] for m in missed] == [1, 2, 3]
    assert all(m.detail["command_id"] == sends[0].command_id for m in missed)
    (failed,) = _entries(history, HistoryKind.STEP_FAILED, "schedule_shipping")
    assert failed.detail["error"] == "no reply after 3 attempts"
    undone = [h.step for h in history if h.kind == HistoryKind.COMPENSATION_SENT.value]
    assert undone == ["schedule_shipping", "charge_payment", "reserve_inventory"]
    assert history[-1].kind == HistoryKind.COMPENSATED.value


async def test_a_success_after_the_deadline_is_undone_before_the_saga_is_compensated(
    coordinator_settings: Settings, running_coordinator: Any, topic_reader: Any, send_envelope: Any
) -> None:
    settings = _settings(coordinator_settings)
    topics = Topics(settings.kafka.topic_prefix)
    async with (
        running_coordinator(settings, REGISTRY) as coordinator,
        topic_reader(topics.commands("inventory")) as inventory_topic,
        topic_reader(topics.commands("payment")) as payment_topic,
    ):
        inventory, payment = Feed(inventory_topic), Feed(payment_topic)
        saga_id = await coordinator.client.start("quick_order", ORDER, saga_id="late-charge")
        (reserve,) = await inventory.wait(ReserveStock)
        await send_envelope(
            topics.replies, participant_reply(reserve, Outcome.SUCCESS, {"reservation_id": "r-1"})
        )
        charges = await payment.wait(ChargePayment, 3)

        # The saga gives up on the charge, but the charge may still happen: it sends the refund
        # (naming the charge) and is not compensated before the refund is answered.
        (refund,) = await payment.wait(RefundPayment)
        assert refund.step == "charge_payment"
        assert refund.attempt == 1
        assert refund.compensates == charges[0].command_id
        assert refund.payload == {"order_id": ORDER.order_id, "amount_cents": ORDER.amount_cents}
        gave_up = await _status(coordinator, saga_id, SagaStatus.COMPENSATING)
        assert gave_up.failure_reason == "charge_payment: no reply after 3 attempts"
        await inventory.settle(coordinator)
        assert inventory.count(ReleaseStock) == 0, "released before the charge was settled"

        # The payment service did charge after all, and says so in reply to the first send:
        # the refund on its way settles it, nothing more is sent.
        late = participant_reply(charges[0], Outcome.SUCCESS, {"charge_id": "ch-late"})
        await send_envelope(topics.replies, late)

        async def late_reply_recorded() -> list[HistoryRecord] | None:
            history = await _history(coordinator, saga_id)
            return history if _entries(history, HistoryKind.LATE_REPLY, "charge_payment") else None

        await eventually(late_reply_recorded, timeout=WAIT_S, what="the late charge's reply")
        assert (await _saga(coordinator, saga_id)).status is SagaStatus.COMPENSATING

        # The participant refunds the charge it made; then the stock is released.
        await send_envelope(topics.replies, participant_reply(refund, Outcome.SUCCESS, {}))
        (release,) = await inventory.wait(ReleaseStock)
        await send_envelope(topics.replies, participant_reply(release, Outcome.SUCCESS, {}))
        saga = await _status(coordinator, saga_id, SagaStatus.COMPENSATED)
        assert saga.compensated_steps == ("charge_payment", "reserve_inventory")
        assert (saga.current_step, saga.deadline_at) == (None, None)
        await payment.settle(coordinator)
        assert payment.count(RefundPayment) == 1
        history = await _history(coordinator, saga_id)

    (first,) = _entries(history, HistoryKind.LATE_REPLY, "charge_payment")
    assert (first.detail["command_id"], first.detail["outcome"]) == (
        charges[0].command_id,
        "success",
    )
    assert first.detail["undone_by"] == "in_doubt"
    sent = _entries(history, HistoryKind.COMPENSATION_SENT, "charge_payment")
    assert [s.detail["command_id"] for s in sent] == [refund.command_id]
    assert [h.kind for h in history].count(HistoryKind.COMPENSATED.value) == 1


async def test_retryable_rejections_are_retried_until_the_step_succeeds(
    coordinator_settings: Settings,
    running_coordinator: Any,
    topic_reader: Any,
    db_engine: AsyncEngine,
    kafka: Any,
) -> None:
    settings = _settings(coordinator_settings)
    prefix = settings.kafka.topic_prefix
    topics = Topics(prefix)
    inventory = Service("inventory", schema="inventory_svc")
    payment = Service("payment", schema="payment_svc")
    shipping = Service("shipping", schema="shipping_svc")
    charge_attempts: list[int] = []

    @inventory.handles(ReserveStock)
    async def reserve(command: ReserveStock, ctx: HandlerContext) -> StockReserved:
        return StockReserved(reservation_id=f"r-{command.order_id}")

    @payment.handles(ChargePayment)
    async def charge(command: ChargePayment, ctx: HandlerContext) -> PaymentCharged:
        charge_attempts.append(ctx.attempt)
        if ctx.attempt < 3:
            raise CommandRejected("busy", retryable=True)
        return PaymentCharged(charge_id=f"ch-{command.order_id}")

    @shipping.handles(ScheduleShipment)
    async def ship(command: ScheduleShipment, ctx: HandlerContext) -> ShipmentScheduled:
        return ShipmentScheduled(shipment_id=f"sh-{command.order_id}")

    config = KafkaConfig(
        kafka.bootstrap_servers,
        idempotent=kafka.supports_idempotence,
        session_timeout_ms=settings.kafka.session_timeout_ms,
        heartbeat_interval_ms=500,
    )
    runners = [
        ServiceRunner(
            service,
            kafka=config,
            engine=db_engine,
            topics=topics,
            group_id=f"{prefix}{service.name}",
        )
        for service in (inventory, payment, shipping)
    ]
    async with running_coordinator(settings, REGISTRY) as coordinator:
        for runner in runners:
            await runner.start()
        try:
            saga_id = await coordinator.client.start("patient_order", ORDER, saga_id="busy-payment")
            saga = await _status(coordinator, saga_id, SagaStatus.COMPLETED)
            history = await _history(coordinator, saga_id)
        finally:
            for runner in runners:
                await runner.stop()
        async with topic_reader(topics.replies) as replies_topic:
            replies = Feed(replies_topic)
            await replies.read_published()  # the participants have stopped

    assert charge_attempts == [1, 2, 3]
    assert saga.data["charge_id"] == "ch-o-1"
    sent = _entries(history, HistoryKind.COMMAND_SENT, "charge_payment")
    assert [s.detail["attempt"] for s in sent] == [1, 2, 3]
    assert len({s.detail["command_id"] for s in sent}) == 1
    refused = _entries(history, HistoryKind.STEP_RETRYABLE_FAILURE, "charge_payment")
    assert [(r.detail["attempt"], r.detail["error"]) for r in refused] == [(1, "busy"), (2, "busy")]
    assert not any(h.kind == HistoryKind.DEADLINE_MISSED.value for h in history)
    charge_replies = [r for r in replies.seen if r.step == "charge_payment"]
    assert [(r.attempt, r.outcome) for r in charge_replies] == [
        (1, Outcome.RETRYABLE),
        (2, Outcome.RETRYABLE),
        (3, Outcome.SUCCESS),
    ]
    # The participant recorded only the answer it stands by; a retryable one leaves no row.
    async with db_engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT command_id, status, reply->>'outcome' AS outcome, "
                    "(reply->>'attempt')::int AS attempt "
                    "FROM payment_svc.saga_processed_commands"
                )
            )
        ).all()
    assert [(r.command_id, r.status, r.outcome, r.attempt) for r in rows] == [
        (sent[0].detail["command_id"], "done", "success", 3)
    ]


async def test_replies_that_do_not_match_the_awaited_command_change_nothing(
    coordinator_settings: Settings, running_coordinator: Any, topic_reader: Any, send_envelope: Any
) -> None:
    settings = _settings(coordinator_settings)
    topics = Topics(settings.kafka.topic_prefix)
    async with (
        running_coordinator(settings, REGISTRY) as coordinator,
        topic_reader(topics.commands("inventory")) as inventory_topic,
        topic_reader(topics.commands("payment")) as payment_topic,
        topic_reader(topics.commands("shipping")) as shipping_topic,
    ):
        inventory, payment, shipping = (
            Feed(inventory_topic),
            Feed(payment_topic),
            Feed(shipping_topic),
        )
        saga_id = await coordinator.client.start("patient_order", ORDER, saga_id="fenced")
        (reserve,) = await inventory.wait(ReserveStock)
        await send_envelope(
            topics.replies, participant_reply(reserve, Outcome.SUCCESS, {"reservation_id": "r-1"})
        )
        (charge,) = await payment.wait(ChargePayment)
        before = await _saga(coordinator, saga_id)
        assert (before.current_step, before.attempt) == ("charge_payment", 1)

        stale = [
            # The awaited step, but another command's id.
            participant_reply(charge, Outcome.SUCCESS, {"charge_id": "x"}).model_copy(
                update={"command_id": str(uuid.uuid4())}
            ),
            # The awaited command id, but a step that is not current ...
            participant_reply(charge, Outcome.SUCCESS, {"shipment_id": "x"}).model_copy(
                update={"step": "schedule_shipping"}
            ),
            # ... or one the saga does not have.
            participant_reply(charge, Outcome.FAILURE).model_copy(update={"step": "no_such_step"}),
            # The awaited step and id, but an attempt that was never sent.
            participant_reply(charge, Outcome.SUCCESS, {"charge_id": "x"}).model_copy(
                update={"attempt": 2}
            ),
        ]
        for reply in stale:
            await send_envelope(topics.replies, reply)

        async def all_fenced() -> list[HistoryRecord] | None:
            history = await _history(coordinator, saga_id)
            fenced = [h for h in history if h.kind == HistoryKind.STALE_REPLY.value]
            return fenced if len(fenced) >= len(stale) else None

        fenced = await eventually(
            all_fenced, timeout=WAIT_S, what="the stale replies to be recorded"
        )
        assert await _saga(coordinator, saga_id) == before, "a stale reply changed the saga"
        await shipping.settle(coordinator)
        await payment.settle(coordinator)
        assert (shipping.seen, payment.count(ChargePayment), payment.count(RefundPayment)) == (
            [],
            1,
            0,
        )
        assert [(h.step, h.message_id) for h in fenced] == [(r.step, r.message_id) for r in stale]

        # The awaited reply still counts afterwards.
        await send_envelope(
            topics.replies, participant_reply(charge, Outcome.SUCCESS, {"charge_id": "ch-1"})
        )
        (shipment,) = await shipping.wait(ScheduleShipment)
        assert shipment.saga_id == saga_id
        after = await _saga(coordinator, saga_id)
        assert (after.current_step, after.data["charge_id"]) == ("schedule_shipping", "ch-1")
