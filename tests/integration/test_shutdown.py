"""Shutdown is bounded: a batch that cannot finish within the grace period is abandoned
(it is redelivered later), and the coordinator still exits."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy import text

from coordinator.app import Coordinator
from coordinator.config import Settings
from coordinator.store.database import create_engine
from saga_defs import OrderData, default_registry
from saga_defs.order import OrderItem
from service_sdk import Envelope, MessageKind, Outcome, Topics

ORDER = OrderData(
    order_id="o-stuck", customer_id="c", items=(OrderItem(sku="s", quantity=1),), amount_cents=1
)


async def test_a_batch_stuck_on_a_lock_does_not_stop_the_coordinator_from_exiting(
    coordinator_settings: Settings, running_coordinator: Any, topic_reader: Any, send_envelope: Any
) -> None:
    settings = coordinator_settings.model_copy(update={"shutdown_grace_s": 1.0})
    topics = Topics(settings.kafka.topic_prefix)
    stop = asyncio.Event()
    async with Coordinator(settings, default_registry()) as coordinator:
        serving = asyncio.create_task(coordinator.serve(stop))
        saga_id = await coordinator.ops.client.start("order", ORDER, saga_id="stuck")
        async with topic_reader(topics.commands("inventory")) as inventory:
            (command,) = await inventory.envelopes(1)
        blocker = create_engine(settings.database.url, pool_size=1)
        try:
            async with blocker.connect() as conn:
                # Another writer holds the saga's row: the reply's batch waits on the lock.
                await conn.execute(
                    text("SELECT 1 FROM saga.saga_instance WHERE saga_id = :s FOR UPDATE"),
                    {"s": saga_id},
                )
                await send_envelope(
                    topics.replies,
                    Envelope(
                        kind=MessageKind.REPLY,
                        message_type=command.message_type,
                        saga_id=saga_id,
                        saga_type="order",
                        step=command.step,
                        command_id=command.command_id,
                        outcome=Outcome.SUCCESS,
                        payload={"reservation_id": "r"},
                    ),
                )
                await asyncio.sleep(2.0)  # the batch is now blocked inside its transaction
                began = time.monotonic()
                stop.set()
                await asyncio.wait_for(serving, timeout=15)
                assert time.monotonic() - began < 10
                await conn.rollback()
        finally:
            await blocker.dispose()
    # The abandoned reply was not dead-lettered: the next coordinator applies it.
    async with running_coordinator(settings) as successor:
        async with topic_reader(topics.commands("payment")) as payment:
            (charge,) = await payment.envelopes(1)
        assert charge.saga_id == saga_id
        async with successor.store.engine.connect() as conn:
            saga = await successor.store.select_saga(conn, saga_id)
        assert saga is not None
        assert saga.current_step == "charge_payment"
    async with topic_reader(Topics.dead_letters(topics.replies)) as dlq:
        assert await dlq.quiet(1.0) == [], "a reply was dead-lettered because of the shutdown"
