"""The trip demo end to end over real Kafka + PostgreSQL: two coordinator processes and the
trip participants' process; every trip ends as planned and the participants' ledger agrees
(parallel bookings, skipped and refused fraud checks, approvals sent as signals before and
during their waits, the loyalty child saga and its undo, reminder timers, and a statement
schedule fired once per tick by one of the two coordinators)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from rich.console import Console
from sqlalchemy import text

from coordinator.demo.runner import DemoOptions, Infrastructure
from coordinator.demo.trip import DEMO_SCHEDULE, TripCluster


@pytest.mark.timeout(400)
async def test_the_trip_demo_ends_as_planned_with_a_correct_ledger(
    kafka: Any, topic_prefix: str, database_url: str
) -> None:
    infra = Infrastructure(
        kafka.bootstrap_servers, kafka.supports_idempotence, database_url, kafka.kind
    )
    options = DemoOptions(
        orders=80, fail_rate=0.15, timeout_s=180, topic_prefix=topic_prefix, coordinators=2
    )
    cluster = TripCluster(options, infra, Console(quiet=True))
    try:
        await cluster.prepare()
        await cluster.start()
        await cluster.wait_ready()
        await cluster.submit()
        summary = await cluster.summarize(await cluster.wait())
        async with cluster.engine.connect() as conn:
            ticks = await conn.scalar(
                text("SELECT count(*) FROM saga.saga_schedule_tick WHERE schedule = :s"),
                {"s": DEMO_SCHEDULE},
            )
            statements = await conn.scalar(
                text(
                    "SELECT count(*) FROM saga.saga_instance WHERE saga_type = 'loyalty_statement'"
                )
            )
    finally:
        await cluster.close()
    assert summary.ledger_problems == []
    assert (summary.failed, summary.stuck) == (0, 0)
    assert (summary.completed, summary.compensated) == (
        summary.expected_completed,
        summary.expected_compensated,
    )
    assert summary.expected_compensated > 0
    assert summary.approvals_sent > summary.approvals_before_wait > 0
    assert 0 < summary.fraud_checked < summary.orders
    # One statement saga per fired tick, though two coordinators ran the schedule.
    assert ticks == statements
    assert summary.ok
    assert all(c.returncode == 0 for c in cluster.children), "a process did not exit cleanly"
    assert dataclasses.asdict(summary)["statements_started"] == statements
