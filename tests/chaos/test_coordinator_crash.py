"""Crash the coordinator with SIGKILL in the middle of a run: every saga still ends, and
the participants' ledger shows every effect exactly once."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from coordinator.demo.runner import TERMINAL, DemoCluster, DemoOptions, Infrastructure


async def test_sigkilled_coordinator_restarts_and_finishes_every_saga(
    kafka: Any, topic_prefix: str, database_url: str
) -> None:
    infra = Infrastructure(
        kafka.bootstrap_servers, kafka.supports_idempotence, database_url, kafka.kind
    )
    options = DemoOptions(orders=500, fail_rate=0.1, timeout_s=240, topic_prefix=topic_prefix)
    cluster = DemoCluster(options, infra, Console(quiet=True))
    try:
        await cluster.prepare()
        await cluster.start()
        await cluster.wait_ready()
        first = cluster.children[0]
        assert first.name == "coordinator-0"
        await cluster.submit()
        midway = await cluster.wait(until=100, progress=False)
        first.kill()
        done_at_kill = sum(1 for s, _ in midway.values() if s in TERMINAL)
        assert done_at_kill < 500, "the run finished before the crash; the test proves nothing"
        cluster.children.remove(first)
        await cluster.start_coordinator()
        summary = await cluster.summarize(await cluster.wait(progress=False))
    finally:
        await cluster.close()
    assert summary.ledger_problems == []
    assert (summary.failed, summary.stuck) == (0, 0)
    assert (summary.completed, summary.compensated) == (450, 50)
    assert summary.ledger_ok
