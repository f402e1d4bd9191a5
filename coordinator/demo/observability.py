"""The demo under a real Prometheus: what to scrape, and poison messages for the dead-letter
metrics. Used by the observability test and ``deploy/render_metrics.py``."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from aiokafka import AIOKafkaProducer
from rich.console import Console

from coordinator.demo.participants import PARTICIPANTS
from coordinator.demo.runner import DemoCluster, DemoOptions, Infrastructure
from coordinator.devstack.prometheus import PrometheusServer
from coordinator.ops.client import start_request
from coordinator.runtime.kafka import producer_kwargs
from service_sdk.contract import Envelope, MessageKind, Outcome, Topics, encode_headers

__all__ = [
    "COORDINATOR_JOB",
    "PARTICIPANT_JOB",
    "observed_demo",
    "scrape_jobs",
    "send_poison",
    "submit_in_waves",
]

COORDINATOR_JOB = "saga-coordinator"
"""Prometheus job of the coordinators (the same name as in ``deploy/prometheus``)."""
PARTICIPANT_JOB = "saga-participants"
"""Prometheus job of the participant services."""


def scrape_jobs(cluster: DemoCluster) -> dict[str, list[str]]:
    """The cluster's processes as Prometheus jobs (job name -> ``host:port`` targets)."""
    jobs: dict[str, list[str]] = {COORDINATOR_JOB: [], PARTICIPANT_JOB: []}
    for name, port in cluster.metrics_ports.items():
        job = COORDINATOR_JOB if name.startswith("coordinator-") else PARTICIPANT_JOB
        jobs[job].append(f"127.0.0.1:{port}")
    return jobs


async def send_poison(cluster: DemoCluster) -> int:
    """Publish records no one can process, so every dead-letter path has data.

    To the replies topic: one undecodable record and one reply for a saga that does not
    exist; to each participant's commands topic: one undecodable record and one command of a
    type the service does not handle. Returns how many records were sent (each one becomes
    a dead letter).
    """
    topics = Topics(cluster.settings.kafka.topic_prefix)
    saga_id = f"poison-{uuid.uuid4().hex[:8]}"
    undecodable = b"{not json"
    envelopes = [
        (
            topics.replies,
            Envelope(
                kind=MessageKind.REPLY,
                message_type="inventory.reserve_stock",
                source="poison",
                saga_id=saga_id,
                saga_type="order",
                step="reserve_inventory",
                attempt=1,
                command_id=f"{saga_id}-command",
                outcome=Outcome.SUCCESS,
            ),
        )
    ]
    raw = [topics.replies]
    for service in PARTICIPANTS:
        raw.append(topics.commands(service))
        envelopes.append(
            (
                topics.commands(service),
                Envelope(
                    kind=MessageKind.COMMAND,
                    message_type=f"{service}.no_such_command",
                    source="poison",
                    saga_id=saga_id,
                    saga_type="order",
                    step="no_such_step",
                    attempt=1,
                    command_id=f"{saga_id}-{service}",
                ),
            )
        )
    producer = AIOKafkaProducer(**producer_kwargs(cluster.settings.kafka))
    await producer.start()
    try:
        for topic in raw:
            await producer.send_and_wait(topic, undecodable, key=saga_id.encode())
        for topic, envelope in envelopes:
            await producer.send_and_wait(
                topic,
                envelope.to_bytes(),
                key=envelope.key(),
                headers=encode_headers(envelope.headers()),
            )
    finally:
        await producer.stop()
    return len(raw) + len(envelopes)


async def submit_in_waves(cluster: DemoCluster, waves: int, interval_s: float) -> None:
    """Publish the cluster's orders in ``waves`` equal parts, ``interval_s`` apart, so a
    picture of the run shows load over time rather than one spike."""
    orders = cluster.plan.orders
    size = max(1, -(-len(orders) // waves))
    topic = Topics(cluster.settings.kafka.topic_prefix).requests
    producer = AIOKafkaProducer(**producer_kwargs(cluster.settings.kafka))
    await producer.start()
    cluster.started_at = time.time()
    try:
        for first in range(0, len(orders), size):
            if first:
                await asyncio.sleep(interval_s)
            sends = []
            for order in orders[first : first + size]:
                envelope = start_request("order", order, saga_id=order.order_id, source="demo")
                cluster.submitted_at[order.order_id] = time.time()
                sends.append(
                    await producer.send(
                        topic,
                        envelope.to_bytes(),
                        key=envelope.key(),
                        headers=encode_headers(envelope.headers()),
                    )
                )
            await asyncio.gather(*sends)
    finally:
        await producer.stop()


@contextlib.asynccontextmanager
async def observed_demo(
    options: DemoOptions,
    infra: Infrastructure,
    console: Console,
    *,
    rule_files: Sequence[Path] = (),
    scrape_interval_s: float = 1.0,
) -> AsyncIterator[tuple[DemoCluster, PrometheusServer]]:
    """A started demo cluster (warmed up) with a Prometheus scraping every one of its
    processes; both are stopped on exit. Submitting the orders is the caller's."""
    cluster = DemoCluster(options, infra, console)
    try:
        await cluster.prepare()
        await cluster.start()
        async with PrometheusServer(
            scrape_jobs(cluster), scrape_interval_s=scrape_interval_s, rule_files=rule_files
        ) as prometheus:
            await cluster.wait_ready()
            await prometheus.wait_until_up()
            yield cluster, prometheus
    finally:
        await cluster.close()
