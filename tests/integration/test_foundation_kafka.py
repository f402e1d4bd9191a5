"""The broker under the coordinator behaves as the design assumes.

Consumer groups with manual commits resume exactly at the committed offsets (nothing lost,
nothing processed twice), keyed messages keep their partition and order, and, on Apache Kafka,
the idempotent producer works.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.support.waiting import eventually

if TYPE_CHECKING:
    from collections.abc import Callable

    from coordinator.devstack import KafkaService, TopicFactory

TOTAL = 10_000
KEYS = 24
PARTITIONS = 4
HALF = TOTAL // 2


@dataclass
class ConsumerRun:
    """What one consumer-group member processed and committed."""

    processed: list[tuple[int, int]] = field(default_factory=list)
    first_offsets: dict[int, int] = field(default_factory=dict)
    committed: dict[int, int | None] = field(default_factory=dict)
    keys: dict[tuple[int, int], tuple[bytes, int]] = field(default_factory=dict)


async def _produce(settings: dict[str, Any], topic: str) -> dict[int, int]:
    """Send TOTAL keyed messages; return the end offset of each partition."""
    producer = AIOKafkaProducer(**settings, linger_ms=5)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, key=f"key-{i % KEYS}".encode(), value=str(i).encode())
            for i in range(TOTAL)
        ]
        sent = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    ends: dict[int, int] = defaultdict(int)
    for metadata in sent:
        ends[metadata.partition] = max(ends[metadata.partition], metadata.offset + 1)
    return dict(ends)


async def _consume(
    settings: dict[str, Any],
    topic: str,
    group: str,
    *,
    done: Callable[[int, dict[int, int]], bool],
    partitions: range,
) -> ConsumerRun:
    """Consume in batches, committing after each, until ``done(processed, positions)``."""
    run = ConsumerRun()
    consumer = AIOKafkaConsumer(
        topic,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **settings,
    )
    await consumer.start()
    try:
        positions: dict[int, int] = {}
        async with asyncio.timeout(90):
            while not done(len(run.processed), positions):
                batches = await consumer.getmany(timeout_ms=500, max_records=250)
                offsets = {}
                for tp, records in batches.items():
                    for record in records:
                        run.processed.append((tp.partition, record.offset))
                        run.first_offsets.setdefault(tp.partition, record.offset)
                        run.keys[(tp.partition, record.offset)] = (record.key, int(record.value))
                    offsets[tp] = records[-1].offset + 1
                    positions[tp.partition] = offsets[tp]
                if offsets:
                    await consumer.commit(offsets)
        for p in partitions:
            run.committed[p] = await consumer.committed(TopicPartition(topic, p))
    finally:
        await consumer.stop()
    return run


async def test_consumer_group_resumes_exactly_at_committed_offsets(
    kafka: KafkaService,
    fresh_topics: TopicFactory,
    topic_prefix: str,
    kafka_producer_settings: dict[str, Any],
    kafka_consumer_settings: dict[str, Any],
) -> None:
    [topic] = await fresh_topics("foundation.orders", partitions=PARTITIONS)
    ends = await _produce(kafka_producer_settings, topic)
    assert sum(ends.values()) == TOTAL
    assert sorted(ends) == list(range(PARTITIONS)), "24 keys should reach every partition"
    group = f"{topic_prefix}foundation"

    first = await _consume(
        kafka_consumer_settings,
        topic,
        group,
        done=lambda processed, _: processed >= HALF,
        partitions=range(PARTITIONS),
    )
    resume = {p: first.committed[p] or 0 for p in ends}
    second = await _consume(
        kafka_consumer_settings,
        topic,
        group,
        done=lambda _, positions: all(positions.get(p, resume[p]) >= ends[p] for p in ends),
        partitions=range(PARTITIONS),
    )

    everything = {(p, offset) for p, end in ends.items() for offset in range(end)}
    assert HALF <= len(first.processed) < TOTAL
    assert len(set(first.processed)) == len(first.processed), "first member saw duplicates"
    assert len(set(second.processed)) == len(second.processed), "second member saw duplicates"
    assert set(first.processed).isdisjoint(second.processed), "reprocessed after a commit"
    assert set(first.processed) | set(second.processed) == everything, "messages lost"

    for p, end in ends.items():
        done_by_first = [offset for part, offset in first.processed if part == p]
        expected_commit = max(done_by_first) + 1 if done_by_first else None
        assert first.committed[p] == expected_commit
        if resume[p] < end:
            assert second.first_offsets[p] == resume[p]
        else:
            assert p not in second.first_offsets
        assert second.committed[p] == end

    # One key, one partition, in production order: what per-saga ordering relies on.
    seen = {**first.keys, **second.keys}
    partitions_of_key: dict[bytes, set[int]] = defaultdict(set)
    values_of_key: dict[bytes, list[tuple[int, int]]] = defaultdict(list)
    for (p, offset), (key, value) in seen.items():
        partitions_of_key[key].add(p)
        values_of_key[key].append((offset, value))
    assert all(len(parts) == 1 for parts in partitions_of_key.values())
    for pairs in values_of_key.values():
        in_offset_order = [value for _, value in sorted(pairs)]
        assert in_offset_order == sorted(in_offset_order)


@pytest.mark.apache_kafka
async def test_idempotent_producer_works_on_apache_kafka(
    kafka: KafkaService, fresh_topics: TopicFactory
) -> None:
    [topic] = await fresh_topics("foundation.idempotent", partitions=1)
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, enable_idempotence=True)
    await producer.start()
    try:
        for i in range(100):
            await producer.send_and_wait(topic, key=b"saga-1", value=str(i).encode())
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        values: list[int] = []

        async def all_read() -> bool:
            batches = await consumer.getmany(partition, timeout_ms=500)
            values.extend(int(r.value) for r in batches.get(partition, []))
            assert len(values) >= 100, f"{len(values)} of 100 record(s)"
            return True

        await eventually(all_read, interval=0, what=f"the records of {topic}")
    finally:
        await consumer.stop()
    assert values == list(range(100))
