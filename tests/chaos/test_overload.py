"""Overload: a spike never changes an outcome, and a participant that is really down is fenced.

Both run the order saga with two-second step timeouts (``quick_order``) in real coordinator and
participant processes on real Kafka and PostgreSQL, so queues outlast a step's attempts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from sqlalchemy import text

from coordinator.core.state import HistoryKind
from coordinator.demo.runner import DemoCluster, DemoOptions, Infrastructure
from tests.support.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = "tests.chaos.quick_order:registry"


def _environment(**settings: str) -> tuple[tuple[str, str], ...]:
    # The coordinator processes import the quick registry from the repository's tests.
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return (("PYTHONPATH", path), *settings.items())


async def _history_counts(cluster: DemoCluster) -> dict[str, int]:
    async with cluster.engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT kind, count(*) AS n FROM saga.saga_history "
                "WHERE saga_id = ANY(:ids) GROUP BY kind"
            ),
            {"ids": cluster.order_ids},
        )
        return {row.kind: row.n for row in rows}


@pytest.mark.timeout(900)
async def test_a_burst_beyond_the_participants_capacity_changes_no_outcome(
    kafka: Any, topic_prefix: str, database_url: str
) -> None:
    infra = Infrastructure(
        kafka.bootstrap_servers, kafka.supports_idempotence, database_url, kafka.kind
    )
    options = DemoOptions(
        orders=2000,
        fail_rate=0.1,
        timeout_s=780,
        topic_prefix=topic_prefix,
        # Slow participants: the burst queues at them for far longer than a 2 s step timeout.
        handler_delay_ms=5,
        registry=REGISTRY,
        environment=_environment(),
    )
    cluster = DemoCluster(options, infra, Console(quiet=True))
    try:
        await cluster.prepare()
        await cluster.start()
        await cluster.wait_ready()
        await cluster.submit()
        statuses = await cluster.wait(progress=False)
        # The ledger is read the moment the last saga is terminal: nothing may still land.
        summary = await cluster.summarize(statuses)
        history = await _history_counts(cluster)
    finally:
        await cluster.close()
    assert summary.ledger_problems == []
    assert (summary.failed, summary.stuck) == (0, 0)
    assert (summary.completed, summary.compensated) == (1800, 200), "only declined cards cancel"
    assert summary.ledger_ok
    postponed = history.get(HistoryKind.DEADLINE_POSTPONED.value, 0)
    assert postponed > 0, "no command outlasted its timeout in a queue: the test proves nothing"
    assert history.get(HistoryKind.DEADLINE_MISSED.value, 0) == 0, (
        "a deadline fired for a participant that was alive"
    )


@pytest.mark.timeout(600)
async def test_a_participant_down_past_the_attempts_is_fenced_when_it_comes_back(
    kafka: Any, topic_prefix: str, database_url: str
) -> None:
    infra = Infrastructure(
        kafka.bootstrap_servers, kafka.supports_idempotence, database_url, kafka.kind
    )
    options = DemoOptions(
        orders=20,
        fail_rate=0.0,
        timeout_s=300,
        topic_prefix=topic_prefix,
        registry=REGISTRY,
        # A dead payment service is known as dead three seconds after its last heartbeat.
        environment=_environment(SAGA_DEADLINES__LIVENESS_WINDOW_S="3"),
    )
    cluster = DemoCluster(options, infra, Console(quiet=True))
    try:
        await cluster.prepare()
        await cluster.start()
        await cluster.wait_ready()
        payment = cluster.child("payment")
        payment.kill()
        cluster.children.remove(payment)
        await cluster.submit()

        async def all_gave_up_on_the_charge() -> bool:
            async with cluster.engine.connect() as conn:
                waiting = await conn.scalar(
                    text(
                        "SELECT count(*) FROM saga.saga_instance WHERE saga_id = ANY(:ids) "
                        "AND status = 'COMPENSATING' AND in_doubt_step = 'charge_payment'"
                    ),
                    {"ids": cluster.order_ids},
                )
            return waiting == len(cluster.order_ids)

        # Three sends of every charge went unanswered: each saga sent the refund that names
        # its charge, and waits for it; nothing is compensated while the charge may still run.
        await eventually(all_gave_up_on_the_charge, timeout=120, what="every saga to give up")
        await cluster.start_participant("payment")
        statuses = await cluster.wait(progress=False)
        summary = await cluster.summarize(statuses)
        async with cluster.engine.connect() as conn:
            fenced = await conn.scalar(
                text(
                    "SELECT count(*) FROM saga.saga_history WHERE saga_id = ANY(:ids) "
                    "AND kind = 'compensation_succeeded' AND step = 'charge_payment' "
                    "AND (detail ->> 'fenced')::boolean"
                ),
                {"ids": cluster.order_ids},
            )
            charged = await conn.scalar(
                text("SELECT count(*) FROM payment.charges WHERE order_id = ANY(:ids)"),
                {"ids": cluster.order_ids},
            )
    finally:
        await cluster.close()
    assert summary.ledger_problems == []
    assert (summary.completed, summary.compensated, summary.failed, summary.stuck) == (
        0,
        20,
        0,
        0,
    )
    assert fenced == 20, "the returning payment service did not refuse every abandoned charge"
    assert charged == 0, "a charge the saga had given up on was made"
