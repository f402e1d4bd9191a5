"""Shutdown is bounded: a batch that cannot finish within the grace period is abandoned
(it is redelivered later), and the coordinator still exits."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.app import Coordinator
from coordinator.config import Settings
from coordinator.store.database import create_engine
from saga_defs import OrderData, default_registry
from saga_defs.order import OrderItem
from service_sdk import Outcome, Topics
from tests.support.replies import participant_reply
from tests.support.waiting import eventually

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
        saga_id = await coordinator.client.start("order", ORDER, saga_id="stuck")
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
                holder = await conn.scalar(text("SELECT pg_backend_pid()"))
                await send_envelope(
                    topics.replies,
                    participant_reply(command, Outcome.SUCCESS, {"reservation_id": "r"}),
                )
                await eventually(
                    lambda: _waiting_on(blocker, holder),
                    what="the reply's batch to wait on the held row lock",
                )
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
        # Both coordinators have stopped: whatever they dead-lettered is on the topic by now.
        assert await dlq.published() == [], "a reply was dead-lettered because of the shutdown"


async def _waiting_on(engine: AsyncEngine, holder: int) -> list[str]:
    """The queries of sessions waiting on a lock that session ``holder`` holds."""
    # A connection per look: pg_stat_activity is a snapshot kept until the transaction ends.
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT query FROM pg_stat_activity "
                "WHERE wait_event_type = 'Lock' AND :holder = ANY(pg_blocking_pids(pid))"
            ),
            {"holder": holder},
        )
        return list(rows.scalars())
