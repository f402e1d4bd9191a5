"""The order saga end to end over real Kafka + PostgreSQL: the coordinator in-process, the
test playing participant where it needs control over replies."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from sqlalchemy import text

from coordinator.config import EventSettings, Settings
from coordinator.core.state import LifecyclePublishing, SagaStatus
from coordinator.demo.runner import DemoCluster, DemoOptions, Infrastructure
from coordinator.store.database import create_engine
from saga_defs import OrderData
from saga_defs.order import OrderItem
from service_sdk import DeadLetterHeader, Envelope, MessageKind, Outcome, Topics, decode_headers
from tests.support.offsets import committed_to_end
from tests.support.outbox import outbox_sent
from tests.support.replies import participant_reply
from tests.support.waiting import eventually

ORDER = OrderData(
    order_id="o-1",
    customer_id="c-1",
    items=(OrderItem(sku="sku-1", quantity=2),),
    amount_cents=1_250,
)


async def _history(settings: Settings, saga_id: str) -> list[tuple[str, str | None]]:
    engine = create_engine(settings.database.url, pool_size=1)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT kind, step FROM saga.saga_history WHERE saga_id = :s ORDER BY id"),
                {"s": saga_id},
            )
            return [(r.kind, r.step) for r in rows]
    finally:
        await engine.dispose()


async def test_demo_scenario_completes_and_compensates_with_a_correct_ledger(
    kafka: Any, topic_prefix: str, database_url: str
) -> None:
    infra = Infrastructure(
        kafka.bootstrap_servers, kafka.supports_idempotence, database_url, kafka.kind
    )
    options = DemoOptions(orders=60, fail_rate=0.1, timeout_s=120, topic_prefix=topic_prefix)
    cluster = DemoCluster(options, infra, Console(quiet=True))
    try:
        await cluster.prepare()
        await cluster.start()
        await cluster.wait_ready()
        await cluster.submit()
        summary = await cluster.summarize(await cluster.wait(progress=False))
    finally:
        await cluster.close()
    assert summary.ledger_problems == []
    assert (summary.completed, summary.compensated, summary.failed, summary.stuck) == (
        54,
        6,
        0,
        0,
    )
    assert summary.ledger_ok
    assert all(c.returncode == 0 for c in cluster.children), "a process did not exit cleanly"


async def test_a_reply_delivered_twice_changes_nothing(
    coordinator_settings: Settings,
    running_coordinator: Any,
    topic_reader: Any,
    send_envelope: Any,
    kafka_bootstrap: str,
) -> None:
    topics = Topics(coordinator_settings.kafka.topic_prefix)
    async with running_coordinator(coordinator_settings) as coordinator:
        saga_id = await coordinator.client.start("order", ORDER, saga_id="saga-dup")
        async with topic_reader(topics.commands("inventory")) as inventory:
            (reserve,) = await inventory.envelopes(1)
        assert (reserve.step, reserve.attempt) == ("reserve_inventory", 1)
        reply = participant_reply(reserve, Outcome.SUCCESS, {"reservation_id": "r-1"})
        # The same record twice (a redelivery: same message id) ...
        await send_envelope(topics.replies, reply)
        await send_envelope(topics.replies, reply)
        # ... and the same answer again under a new message id (a participant re-publishing).
        await send_envelope(topics.replies, reply.model_copy(update={"message_id": "again"}))
        async with topic_reader(topics.commands("payment")) as payment:
            (charge,) = await payment.envelopes(1)
            # All three replies have been applied and all that followed from them sent.
            await committed_to_end(
                kafka_bootstrap, coordinator_settings.kafka.group_id, topics.replies
            )
            await outbox_sent(coordinator.store)
            assert await payment.published() == [], "the reply advanced the saga more than once"
        assert charge.step == "charge_payment"
        async with coordinator.store.engine.connect() as conn:
            saga = await coordinator.store.select_saga(conn, saga_id)
        assert saga is not None
        assert (saga.status, saga.current_step) == (SagaStatus.RUNNING, "charge_payment")
        assert saga.data["reservation_id"] == "r-1"
    history = await _history(coordinator_settings, saga_id)
    assert history.count(("step_succeeded", "reserve_inventory")) == 1
    assert history.count(("duplicate_reply", "reserve_inventory")) == 1


async def test_starting_the_same_saga_twice_over_kafka_starts_it_once(
    coordinator_settings: Settings,
    running_coordinator: Any,
    topic_reader: Any,
    send_envelope: Any,
    kafka_bootstrap: str,
) -> None:
    from coordinator.ops.client import start_request

    topics = Topics(coordinator_settings.kafka.topic_prefix)
    async with running_coordinator(coordinator_settings) as coordinator:
        for _ in range(2):
            await send_envelope(topics.requests, start_request("order", ORDER, saga_id="once"))
        async with topic_reader(topics.commands("inventory")) as inventory:
            assert len(await inventory.envelopes(1)) == 1
            # Both requests have been processed and all that followed from them sent.
            await committed_to_end(
                kafka_bootstrap, coordinator_settings.kafka.group_id, topics.requests
            )
            await outbox_sent(coordinator.store)
            assert await inventory.published() == []


async def test_bad_replies_are_dead_lettered_and_the_consumer_moves_on(
    coordinator_settings: Settings,
    running_coordinator: Any,
    topic_reader: Any,
    send_envelope: Any,
    producer: Any,
) -> None:
    topics = Topics(coordinator_settings.kafka.topic_prefix)
    async with running_coordinator(coordinator_settings) as coordinator:
        await producer.send_and_wait(topics.replies, b"{not json", key=b"x")
        ghost = participant_reply(
            Envelope(
                kind=MessageKind.COMMAND,
                message_type="inventory.reserve_stock",
                saga_id="no-such-saga",
                saga_type="order",
                step="reserve_inventory",
                command_id="c",
            ),
            Outcome.SUCCESS,
            {},
        )
        await send_envelope(topics.replies, ghost)
        async with topic_reader(Topics.dead_letters(topics.replies)) as dlq:
            letters = await dlq.records(2)
        reasons = {decode_headers(r.headers)[DeadLetterHeader.REASON] for r in letters}
        assert reasons == {"malformed", "unknown_saga"}
        for record in letters:
            headers = decode_headers(record.headers)
            assert headers[DeadLetterHeader.ORIGINAL_TOPIC] == topics.replies
            assert headers[DeadLetterHeader.ORIGINAL_CONSUMER_GROUP] == (
                coordinator_settings.kafka.group_id
            )
            assert DeadLetterHeader.ORIGINAL_OFFSET in headers
            assert headers[DeadLetterHeader.EXCEPTION_MESSAGE]
        assert {r.value for r in letters} >= {b"{not json"}
        # The consumer is still alive: a real saga still starts and sends its command.
        await coordinator.client.start("order", ORDER, saga_id="after-bad")
        async with topic_reader(topics.commands("inventory")) as inventory:
            (command,) = await inventory.envelopes(1)
        assert command.saga_id == "after-bad"


async def test_with_outcomes_only_the_start_and_the_end_are_published(
    coordinator_settings: Settings,
    running_coordinator: Any,
    topic_reader: Any,
    send_envelope: Any,
) -> None:
    settings = coordinator_settings.model_copy(
        update={"events": EventSettings(publish=LifecyclePublishing.OUTCOMES)}
    )
    topics = Topics(settings.kafka.topic_prefix)
    answers = [
        ("inventory", {"reservation_id": "r-1"}),
        ("payment", {"charge_id": "ch-1"}),
        ("shipping", {"shipment_id": "sh-1"}),
    ]
    async with running_coordinator(settings) as coordinator:
        saga_id = await coordinator.client.start("order", ORDER, saga_id="quiet")
        for service, payload in answers:
            async with topic_reader(topics.commands(service)) as commands:
                (command,) = await commands.envelopes(1)
            await send_envelope(topics.replies, participant_reply(command, payload=payload))
        async with topic_reader(topics.events) as events:
            published = await events.envelopes(2)
            await eventually(lambda: _status_is(coordinator, saga_id, SagaStatus.COMPLETED))
            await outbox_sent(coordinator.store)
            published += await events.published()
    assert [e.message_type for e in published] == ["saga.started", "saga.completed"]
    # The history keeps every step: only what is published is less.
    history = await _history(settings, saga_id)
    assert [k for k, _ in history].count("step_succeeded") == 3


async def _status_is(coordinator: Any, saga_id: str, status: SagaStatus) -> bool:
    async with coordinator.store.engine.connect() as conn:
        saga = await coordinator.store.select_saga(conn, saga_id)
    assert saga is not None
    assert saga.status is status, saga
    return True
