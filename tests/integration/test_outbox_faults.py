"""A record Kafka can never take is set aside: it is dead-lettered and recorded, and every row
behind it is still published (real Kafka + PostgreSQL)."""

from __future__ import annotations

from typing import Any

from coordinator.config import Settings
from coordinator.core.state import HistoryKind
from coordinator.store.records import OutboxMessage
from saga_defs.order import OrderData, OrderItem
from service_sdk.contract import DeadLetterHeader, Header, Topics, decode_headers
from tests.support.outbox import outbox_sent

ORDER = OrderData(
    order_id="big-1",
    customer_id="c-1",
    items=(OrderItem(sku="sku-1", quantity=1),),
    amount_cents=500,
)


async def test_an_oversized_outbox_row_is_dead_lettered_and_blocks_nothing(
    coordinator_settings: Settings, running_coordinator: Any, topic_reader: Any
) -> None:
    topics = Topics(coordinator_settings.kafka.topic_prefix)
    inventory_topic = topics.commands("inventory")
    async with (
        running_coordinator(coordinator_settings) as coordinator,
        topic_reader(inventory_topic) as inventory,
        topic_reader(Topics.dead_letters(inventory_topic)) as dead_letters,
    ):
        saga_id = await coordinator.client.start("order", ORDER, saga_id="big-1")
        (first,) = await inventory.envelopes(1)
        store = coordinator.store
        oversized = OutboxMessage(
            saga_id=saga_id,
            topic=inventory_topic,
            key=saga_id.encode(),
            value=b"x" * 2_000_000,  # twice what the producer may send
            headers={Header.STEP: "reserve_inventory", Header.COMMAND_ID: "c-big"},
            message_id="m-big",
        )
        async with store.engine.begin() as conn:
            await store.insert_outbox(conn, [oversized], coordinator.clock.now())
        # A saga started after it still gets its command out.
        await coordinator.client.start(
            "order", ORDER.model_copy(update={"order_id": "after-1"}), saga_id="after-1"
        )
        coordinator.relay.wake()
        (after,) = await inventory.envelopes(1)
        assert after.saga_id == "after-1"
        (letter,) = await dead_letters.records(1)
        await outbox_sent(store)
        async with store.engine.connect() as conn:
            history = await store.select_history(conn, saga_id)
    assert first.saga_id == saga_id
    headers = decode_headers(letter.headers)
    assert headers[DeadLetterHeader.REASON] == "unsendable"
    assert headers[DeadLetterHeader.VALUE_DROPPED] == "2000000"
    assert "MessageSizeTooLarge" in headers[DeadLetterHeader.EXCEPTION_FQCN]
    (entry,) = [h for h in history if h.kind == HistoryKind.COMMAND_UNSENDABLE.value]
    assert entry.step == "reserve_inventory"
    assert entry.detail["bytes"] == 2_000_000
    assert coordinator.relay.set_aside == 1
