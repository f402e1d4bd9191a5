"""Queueing is not failure: heartbeats, pickups, postponed deadlines, and admission control,
over real Kafka and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from datetime import timedelta
from typing import Any

from aiokafka import AIOKafkaProducer
from rich.console import Console
from sqlalchemy import text

from coordinator.config import DeadlineSettings, Settings
from coordinator.core.definition import RetryPolicy, SagaDefinition, SagaRegistry
from coordinator.core.state import HistoryKind, SagaInstance
from coordinator.demo.runner import DemoCluster, DemoOptions, Infrastructure
from coordinator.store.heartbeats import HeartbeatStore
from coordinator.store.records import HistoryRecord
from saga_defs.order import OrderData, OrderItem, OrderSaga
from service_sdk.contract import Envelope, Heartbeat, PickedUpCommand, Topics
from tests.support.waiting import eventually

TIMEOUT = timedelta(seconds=1.5)


class QuickOrderSaga(SagaDefinition[OrderData]):
    """The order saga with 1.5 s step timeouts and three attempts."""

    name = "order"
    data_model = OrderData
    steps = tuple(
        replace(s, timeout=TIMEOUT, retry=RetryPolicy(max_attempts=3)) for s in OrderSaga.steps
    )


REGISTRY = SagaRegistry([QuickOrderSaga])
ORDER = OrderData(
    order_id="q-1",
    customer_id="c-1",
    items=(OrderItem(sku="sku-1", quantity=1),),
    amount_cents=900,
)


async def _saga(coordinator: Any, saga_id: str) -> SagaInstance:
    async with coordinator.store.engine.connect() as conn:
        saga = await coordinator.store.select_saga(conn, saga_id)
    assert saga is not None
    return saga


async def _history(coordinator: Any, saga_id: str) -> list[HistoryRecord]:
    async with coordinator.store.engine.connect() as conn:
        return await coordinator.store.select_history(conn, saga_id)


def _kinds(history: list[HistoryRecord], kind: HistoryKind) -> list[HistoryRecord]:
    return [h for h in history if h.kind == kind.value]


@contextlib.asynccontextmanager
async def _beating(producer: AIOKafkaProducer, topics: Topics, beat: list[Heartbeat]) -> Any:
    """Publish ``beat[0]`` every 0.3 s (the list lets the test swap it) until the block ends."""

    async def loop() -> None:
        while True:
            await producer.send_and_wait(topics.heartbeats, beat[0].to_bytes(), key=b"inventory")
            await asyncio.sleep(0.3)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_queued_command_at_a_live_participant_is_postponed_and_timed_from_its_pickup(
    coordinator_settings: Settings,
    running_coordinator: Any,
    topic_reader: Any,
    producer: AIOKafkaProducer,
) -> None:
    settings = coordinator_settings.model_copy(
        update={"deadlines": DeadlineSettings(scan_interval_s=0.2, liveness_window_s=2.0)}
    )
    topics = Topics(settings.kafka.topic_prefix)
    alive = Heartbeat(service="inventory", instance="inventory-test-1")
    beat = [alive]
    async with (
        running_coordinator(settings, REGISTRY) as coordinator,
        topic_reader(topics.commands("inventory")) as inventory,
        _beating(producer, topics, beat),
    ):
        saga_id = await coordinator.client.start("order", ORDER, saga_id="queued-1")
        (reserve,) = await inventory.envelopes(1)

        # Never picked up, at a live service: its deadline keeps moving, nothing is re-sent.
        async def postponed_twice() -> list[HistoryRecord] | None:
            history = await _history(coordinator, saga_id)
            return history if len(_kinds(history, HistoryKind.DEADLINE_POSTPONED)) >= 2 else None

        history = await eventually(postponed_twice, what="two postponed deadlines")
        assert _kinds(history, HistoryKind.DEADLINE_MISSED) == []
        saga = await _saga(coordinator, saga_id)
        assert (saga.attempt, saga.picked_up_at, saga.service) == (1, None, "inventory")

        # The participant reports it is working on the command: the timeout runs from now.
        picked = PickedUpCommand(
            saga_id=saga_id,
            saga_type="order",
            step="reserve_inventory",
            command_id=reserve.command_id or "",
            attempt=1,
        )
        beat[0] = alive.model_copy(update={"in_progress": (picked,)})

        async def picked_up() -> SagaInstance | None:
            saga = await _saga(coordinator, saga_id)
            return saga if saga.picked_up_at is not None else None

        saga = await eventually(picked_up, what="the pickup to be recorded")
        assert saga.deadline_at is not None
        assert saga.deadline_at - saga.picked_up_at == TIMEOUT  # type: ignore[operator]
        beat[0] = alive

        # Picked up and silent past its timeout: a real miss, re-sent, although alive.
        (again,) = await inventory.envelopes(1)
        assert (again.command_id, again.attempt) == (reserve.command_id, 2)
        history = await _history(coordinator, saga_id)
    assert len(_kinds(history, HistoryKind.COMMAND_PICKED_UP)) == 1
    (missed,) = _kinds(history, HistoryKind.DEADLINE_MISSED)
    assert missed.detail["attempt"] == 1


async def test_without_heartbeats_a_deadline_counts_from_the_send(
    coordinator_settings: Settings, running_coordinator: Any, topic_reader: Any
) -> None:
    settings = coordinator_settings.model_copy(
        update={"deadlines": DeadlineSettings(scan_interval_s=0.2)}
    )
    topics = Topics(settings.kafka.topic_prefix)
    async with (
        running_coordinator(settings, REGISTRY) as coordinator,
        topic_reader(topics.commands("inventory")) as inventory,
    ):
        saga_id = await coordinator.client.start("order", ORDER, saga_id="silent-1")
        sends: list[Envelope] = await inventory.envelopes(2)
        assert [s.attempt for s in sends] == [1, 2]
        history = await _history(coordinator, saga_id)
    assert _kinds(history, HistoryKind.DEADLINE_POSTPONED) == []
    assert _kinds(history, HistoryKind.DEADLINE_MISSED)


async def test_admission_caps_the_sagas_in_flight_and_lets_the_queue_go_in_order(
    kafka: Any, topic_prefix: str, database_url: str
) -> None:
    infra = Infrastructure(
        kafka.bootstrap_servers, kafka.supports_idempotence, database_url, kafka.kind
    )
    cap = 5
    options = DemoOptions(
        orders=60,
        fail_rate=0.1,
        timeout_s=180,
        topic_prefix=topic_prefix,
        environment=(
            ("SAGA_ADMISSION__MAX_IN_FLIGHT", str(cap)),
            ("SAGA_ADMISSION__QUEUED_HIGH_WATER", "10"),
        ),
    )
    cluster = DemoCluster(options, infra, Console(quiet=True))
    peak = 0

    async def sample_in_flight() -> None:
        # What the database holds, read again and again while the run lasts.
        nonlocal peak
        while True:
            async with cluster.engine.connect() as conn:
                in_flight = await conn.scalar(
                    text(
                        "SELECT count(*) FROM saga.saga_instance WHERE saga_id = ANY(:ids) "
                        "AND status IN ('RUNNING', 'COMPENSATING')"
                    ),
                    {"ids": cluster.order_ids},
                )
            peak = max(peak, int(in_flight or 0))
            await asyncio.sleep(0.02)

    try:
        await cluster.prepare()
        await cluster.start()
        await cluster.wait_ready()
        sampler = asyncio.create_task(sample_in_flight())
        try:
            await cluster.submit()
            summary = await cluster.summarize(await cluster.wait(progress=False))
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        async with cluster.engine.connect() as conn:
            queued = await conn.scalar(
                text(
                    "SELECT count(DISTINCT saga_id) FROM saga.saga_history "
                    "WHERE saga_id = ANY(:ids) AND kind = 'queued'"
                ),
                {"ids": cluster.order_ids},
            )
    finally:
        await cluster.close()
    assert summary.ledger_problems == []
    assert (summary.completed, summary.compensated, summary.failed, summary.stuck) == (
        54,
        6,
        0,
        0,
    )
    assert queued, "no start had to wait: the cap was never reached"
    assert 0 < peak <= cap, f"{peak} sagas were in flight at once (cap {cap})"


async def test_when_every_participant_falls_silent_at_once_the_coordinator_counts_nothing(
    coordinator_settings: Settings, running_coordinator: Any, topic_reader: Any
) -> None:
    # Heartbeats were heard before, but none from anyone lately: most likely this
    # coordinator's own Kafka is away, so the silence is not held against the participants.
    settings = coordinator_settings.model_copy(
        update={"deadlines": DeadlineSettings(scan_interval_s=0.2, liveness_window_s=2.0)}
    )
    topics = Topics(settings.kafka.topic_prefix)
    async with (
        running_coordinator(settings, REGISTRY) as coordinator,
        topic_reader(topics.commands("inventory")) as inventory,
    ):
        long_ago = coordinator.clock.now() - timedelta(hours=1)
        async with coordinator.store.engine.begin() as conn:
            await HeartbeatStore().upsert(conn, [("inventory", "inventory-old")], long_ago)
        saga_id = await coordinator.client.start("order", ORDER, saga_id="silent-all")
        await inventory.envelopes(1)

        async def postponed() -> list[HistoryRecord] | None:
            history = await _history(coordinator, saga_id)
            return history if _kinds(history, HistoryKind.DEADLINE_POSTPONED) else None

        history = await eventually(postponed, what="a postponed deadline")
    assert _kinds(history, HistoryKind.DEADLINE_MISSED) == []
