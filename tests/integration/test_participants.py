"""The example participants' business rules on real PostgreSQL, one of them end to end over
Kafka, and the ledger check that detects double effects."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coordinator.demo.ledger import check_ledger
from coordinator.demo.participants import PARTICIPANTS, install_all, inventory, payment, shipping
from saga_defs.order.contracts import (
    ChargePayment,
    OrderItem,
    RefundPayment,
    ReleaseStock,
    ReserveStock,
    ScheduleShipment,
)
from service_sdk import (
    Envelope,
    KafkaConfig,
    Outcome,
    ServiceRunner,
    Topics,
    decode_envelope,
    encode_headers,
)
from service_sdk.testing import command_envelope, invoke
from tests.support.waiting import eventually

if TYPE_CHECKING:
    from coordinator.devstack import KafkaService, TopicFactory

A3 = OrderItem(sku="A", quantity=3)
B2 = OrderItem(sku="B", quantity=2)


@pytest.fixture
async def conn(db_engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection with the participants installed and seeded, in a transaction."""
    async with db_engine.begin() as connection:
        await install_all(connection)
        await inventory.seed(connection, {"A": 10, "B": 5})
        await payment.seed(connection, {"c-ok": "ok", "c-bad": "declined"})
        yield connection


async def _one(conn: AsyncConnection, sql: str, **params: Any) -> Any:
    return (await conn.execute(text(sql), params)).first()


async def _stock(conn: AsyncConnection) -> dict[str, int]:
    rows = await conn.execute(text("SELECT sku, on_hand FROM inventory.stock"))
    return {row.sku: row.on_hand for row in rows}


def test_participants_are_registered() -> None:
    assert set(PARTICIPANTS) == {"inventory", "payment", "shipping"}
    for name, module in PARTICIPANTS.items():
        assert module.service.name == name
        assert module.service.schema == name


async def test_reserve_then_release_is_idempotent(conn: AsyncConnection) -> None:
    reply = await invoke(inventory.service, ReserveStock(order_id="o1", items=(A3, B2, A3)), conn)
    assert reply.outcome is Outcome.SUCCESS
    assert reply.payload == {"reservation_id": "rsv-o1"}
    assert await _stock(conn) == {"A": 4, "B": 3}

    released = await invoke(inventory.service, ReleaseStock(order_id="o1"), conn)
    assert released.payload == {"released": True}
    again = await invoke(inventory.service, ReleaseStock(order_id="o1"), conn)
    assert (again.outcome, again.payload) == (Outcome.SUCCESS, {"released": False})
    assert await _stock(conn) == {"A": 10, "B": 5}
    row = await _one(conn, "SELECT * FROM inventory.reservations WHERE order_id = 'o1'")
    assert (row.status, row.reserve_count, row.release_count) == ("released", 1, 1)
    assert row.released_at is not None

    unknown = await invoke(inventory.service, ReleaseStock(order_id="never"), conn)
    assert unknown.payload == {"released": False}


async def test_insufficient_stock_rejects_and_rolls_back(conn: AsyncConnection) -> None:
    big_b = OrderItem(sku="B", quantity=6)
    reply = await invoke(inventory.service, ReserveStock(order_id="o2", items=(A3, big_b)), conn)
    assert reply.outcome is Outcome.FAILURE
    assert reply.error == "insufficient stock for B"
    # B was short, so nothing of the order was taken.
    assert await _stock(conn) == {"A": 10, "B": 5}
    assert await _one(conn, "SELECT 1 FROM inventory.reservations WHERE order_id = 'o2'") is None

    missing = OrderItem(sku="Z", quantity=1)
    unknown = await invoke(inventory.service, ReserveStock(order_id="o3", items=(missing,)), conn)
    assert unknown.error == "insufficient stock for Z"


async def test_a_batch_of_reservations_is_served_in_turn(conn: AsyncConnection) -> None:
    orders = [
        ReserveStock(order_id="o1", items=(A3, B2)),
        ReserveStock(order_id="o2", items=(OrderItem(sku="B", quantity=4),)),
        ReserveStock(order_id="o3", items=(A3, A3, OrderItem(sku="B", quantity=3))),
        ReserveStock(order_id="o4", items=(OrderItem(sku="Z", quantity=1),)),
    ]
    envelopes = [command_envelope(c, command_id=f"cmd-{c.order_id}") for c in orders]
    replies = await inventory.service.dispatch_many(envelopes, orders, conn)
    assert all(isinstance(reply, Envelope) for reply in replies)
    outcomes = [(r.outcome, r.error, r.payload) for r in replies if isinstance(r, Envelope)]
    assert outcomes == [
        (Outcome.SUCCESS, None, {"reservation_id": "rsv-o1"}),
        # o1 left 3 of B: o2 is refused, and takes nothing.
        (Outcome.FAILURE, "insufficient stock for B", {"sku": "B", "requested": 4}),
        (Outcome.SUCCESS, None, {"reservation_id": "rsv-o3"}),
        (Outcome.FAILURE, "insufficient stock for Z", {"sku": "Z", "requested": 1}),
    ]
    assert await _stock(conn) == {"A": 1, "B": 0}
    rows = await conn.execute(
        text("SELECT order_id, reserve_count FROM inventory.reservations ORDER BY order_id")
    )
    assert [tuple(row) for row in rows] == [("o1", 1), ("o3", 1)]


async def test_a_batch_of_charges_and_shipments(conn: AsyncConnection) -> None:
    charges = [
        ChargePayment(order_id=f"o-{c}", customer_id=c, amount_cents=5, currency="EUR")
        for c in ("c-ok", "c-bad", "c-unknown", "c-ok")
    ]
    envelopes = [command_envelope(c, command_id=f"cmd-{i}") for i, c in enumerate(charges)]
    with pytest.raises(DBAPIError, match=r"affect row a second time"):
        # The same order twice in one batch: the statement fails, and the SDK would then
        # answer the commands one at a time.
        async with conn.begin_nested():
            await payment.service.dispatch_many(envelopes, charges, conn)
    replies = await payment.service.dispatch_many(envelopes[:3], charges[:3], conn)
    assert [(r.outcome, r.error) for r in replies if isinstance(r, Envelope)] == [
        (Outcome.SUCCESS, None),
        (Outcome.FAILURE, "card declined"),
        (Outcome.FAILURE, "card declined"),
    ]
    row = await _one(conn, "SELECT count(*) AS n, max(charge_count) AS most FROM payment.charges")
    assert (row.n, row.most) == (1, 1)

    await payment.start_outage(conn, ["c-ok"])
    with pytest.raises(payment.PaymentProviderDownError, match="c-ok"):
        await payment.service.dispatch_many(envelopes[1:], charges[1:], conn)
    await payment.end_outage(conn)

    shipments = [
        ScheduleShipment(order_id=f"s{i}", customer_id="c-ok", items=(A3, B2)) for i in range(3)
    ]
    envelopes = [command_envelope(c, command_id=f"cmd-s{i}") for i, c in enumerate(shipments)]
    replies = await shipping.service.dispatch_many(envelopes, shipments, conn)
    assert [r.payload for r in replies if isinstance(r, Envelope)] == [
        {"shipment_id": f"shp-s{i}"} for i in range(3)
    ]
    rows = await conn.execute(
        text("SELECT order_id, items, schedule_count FROM shipping.shipments ORDER BY order_id")
    )
    items = [A3.model_dump(mode="json"), B2.model_dump(mode="json")]
    assert [tuple(row) for row in rows] == [(f"s{i}", items, 1) for i in range(3)]


async def test_charge_refund_and_declined_cards(conn: AsyncConnection) -> None:
    charge = ChargePayment(order_id="o1", customer_id="c-ok", amount_cents=1250, currency="EUR")
    reply = await invoke(payment.service, charge, conn)
    assert reply.payload == {"charge_id": "ch-o1"}

    for customer in ("c-bad", "c-unknown"):
        declined = await invoke(
            payment.service,
            ChargePayment(
                order_id=f"o-{customer}", customer_id=customer, amount_cents=5, currency="EUR"
            ),
            conn,
        )
        assert (declined.outcome, declined.error) == (Outcome.FAILURE, "card declined")
    count = await _one(conn, "SELECT count(*) AS n FROM payment.charges")
    assert count.n == 1

    refund = RefundPayment(order_id="o1", amount_cents=1250)
    assert (await invoke(payment.service, refund, conn)).payload == {
        "refunded": True,
        "amount_cents": 1250,
    }
    assert (await invoke(payment.service, refund, conn)).payload == {"refunded": False}
    never = RefundPayment(order_id="never", amount_cents=1)
    assert (await invoke(payment.service, never, conn)).payload == {"refunded": False}
    row = await _one(conn, "SELECT * FROM payment.charges WHERE order_id = 'o1'")
    assert (row.status, row.charge_count, row.refund_count) == ("refunded", 1, 1)


async def test_schedule_shipment(conn: AsyncConnection) -> None:
    command = ScheduleShipment(order_id="o1", customer_id="c-ok", items=(A3,))
    reply = await invoke(shipping.service, command, conn)
    assert reply.payload == {"shipment_id": "shp-o1"}
    row = await _one(conn, "SELECT * FROM shipping.shipments WHERE order_id = 'o1'")
    assert (row.customer_id, row.schedule_count) == ("c-ok", 1)
    assert row.items == [{"sku": "A", "quantity": 3}]


async def _run_orders(conn: AsyncConnection) -> None:
    """o1 completes; o2 fails at shipping's turn and is compensated; o3 fails to reserve."""
    await invoke(inventory.service, ReserveStock(order_id="o1", items=(A3,)), conn)
    await invoke(
        payment.service,
        ChargePayment(order_id="o1", customer_id="c-ok", amount_cents=100, currency="EUR"),
        conn,
    )
    await invoke(
        shipping.service, ScheduleShipment(order_id="o1", customer_id="c-ok", items=(A3,)), conn
    )
    await invoke(inventory.service, ReserveStock(order_id="o2", items=(B2,)), conn)
    await invoke(
        payment.service,
        ChargePayment(order_id="o2", customer_id="c-ok", amount_cents=200, currency="EUR"),
        conn,
    )
    await invoke(payment.service, RefundPayment(order_id="o2", amount_cents=200), conn)
    await invoke(inventory.service, ReleaseStock(order_id="o2"), conn)
    too_many = OrderItem(sku="A", quantity=100)
    failed = await invoke(inventory.service, ReserveStock(order_id="o3", items=(too_many,)), conn)
    assert failed.outcome is Outcome.FAILURE


async def test_ledger_passes_on_a_good_state_and_catches_a_double_refund(
    conn: AsyncConnection,
) -> None:
    await _run_orders(conn)
    orders: dict[str, Any] = {"o1": "COMPLETED", "o2": "COMPENSATED", "o3": "COMPENSATED"}
    initial = {"A": 10, "B": 5}
    ordered = {"o1": [A3], "o2": [B2], "o3": [OrderItem(sku="A", quantity=100)]}
    report = await check_ledger(conn, orders, initial, ordered)
    assert report.ok, report.problems
    assert report.problems == []

    await conn.execute(text("UPDATE payment.charges SET refund_count = 2 WHERE order_id = 'o2'"))
    report = await check_ledger(conn, orders, initial, ordered)
    assert not report.ok
    assert report.problems == [
        "o2 compensated but its charge is refunded (charged 1x, refunded 2x)"
    ]


async def test_ledger_catches_double_effects_stock_drift_and_strays(conn: AsyncConnection) -> None:
    await _run_orders(conn)
    await conn.execute(
        text("UPDATE inventory.reservations SET reserve_count = 2 WHERE order_id = 'o1'")
    )
    await conn.execute(text("UPDATE inventory.stock SET on_hand = on_hand - 1 WHERE sku = 'B'"))
    await conn.execute(text("UPDATE shipping.shipments SET schedule_count = 2"))
    await invoke(
        shipping.service, ScheduleShipment(order_id="o2", customer_id="c-ok", items=(B2,)), conn
    )
    report = await check_ledger(
        conn,
        {"o1": "COMPLETED", "o2": "COMPENSATED"},
        {"A": 10, "B": 5},
        {"o1": [A3], "o2": [B2]},
    )
    assert not report.ok
    assert set(report.problems) == {
        "o1 completed but its reservation is reserved (reserved 2x, released 0x)",
        "o1 shipment scheduled 2x",
        "o2 compensated but has a shipment",
        "stock of B: 4 on hand, expected 5 (5 initial - 0 completed)",
    }


async def test_ledger_caps_the_problem_list(conn: AsyncConnection) -> None:
    orders: dict[str, Any] = {f"x{i}": "COMPLETED" for i in range(10)}
    report = await check_ledger(conn, orders, {"A": 10, "B": 5}, {})
    assert not report.ok
    assert len(report.problems) == 21
    assert report.problems[-1].startswith("... and ")


async def test_inventory_over_kafka_runs_a_redelivered_reserve_once(
    kafka: KafkaService,
    fresh_topics: TopicFactory,
    topic_prefix: str,
    db_engine: AsyncEngine,
    kafka_producer_settings: dict[str, Any],
    kafka_consumer_settings: dict[str, Any],
) -> None:
    commands, replies = await fresh_topics("inventory.commands", "saga.replies", partitions=2)
    await fresh_topics("inventory.commands.dlq", partitions=1)
    async with db_engine.begin() as connection:
        await inventory.install(connection)
        await inventory.seed(connection, {"A": 10, "B": 5})
    reserve = command_envelope(
        ReserveStock(order_id="o9", items=(A3, B2)), saga_id="o9", command_id="reserve-o9"
    )
    release = command_envelope(ReleaseStock(order_id="o9"), saga_id="o9", command_id="release-o9")
    producer = AIOKafkaProducer(**kafka_producer_settings)
    await producer.start()
    try:
        for envelope in (reserve, reserve, release, release):
            await producer.send_and_wait(
                commands,
                envelope.to_bytes(),
                key=envelope.key(),
                headers=encode_headers(envelope.headers()),
            )
    finally:
        await producer.stop()

    runner = ServiceRunner(
        inventory.service,
        kafka=KafkaConfig(kafka.bootstrap_servers, idempotent=kafka.supports_idempotence),
        engine=db_engine,
        topics=Topics(topic_prefix),
    )
    async with runner:
        received = await _read(kafka_consumer_settings, replies, 4)

    payloads = [decode_envelope(record.value).payload for record in received]
    assert payloads == [
        {"reservation_id": "rsv-o9"},
        {"reservation_id": "rsv-o9"},
        {"released": True},
        {"released": True},
    ]
    async with db_engine.connect() as connection:
        row = await _one(connection, "SELECT * FROM inventory.reservations WHERE order_id = 'o9'")
        assert (row.status, row.reserve_count, row.release_count) == ("released", 1, 1)
        assert await _stock(connection) == {"A": 10, "B": 5}


async def _read(settings: dict[str, Any], topic: str, count: int) -> list[Any]:
    consumer = AIOKafkaConsumer(**settings, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    records: list[Any] = []

    async def enough() -> bool:
        for batch in (await consumer.getmany(timeout_ms=200)).values():
            records.extend(batch)
        assert len(records) >= count, f"{len(records)} of {count} record(s)"
        return True

    try:
        consumer.subscribe([topic])
        await eventually(enough, interval=0, what=f"records on {topic}")
    finally:
        await consumer.stop()
    assert len(records) == count
    return sorted(records, key=lambda r: r.offset)
