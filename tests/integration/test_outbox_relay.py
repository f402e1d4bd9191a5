"""The outbox relay publishes what a transaction wrote from memory once it commits, takes a row
Kafka refused back from the table, sweeps only rows pending since its sweep before, and never
publishes a row another relay took (real Kafka + PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from sqlalchemy import event

from coordinator.config import RelaySettings, Settings
from coordinator.core.clock import SystemClock
from coordinator.core.state import SagaInstance, SagaStatus
from coordinator.runtime.kafka import ensure_topics
from coordinator.runtime.outbox import OutboxRelay
from coordinator.runtime.producer import coordinator_producers
from coordinator.store.database import create_engine
from coordinator.store.records import OutboxMessage
from coordinator.store.saga_store import SagaStore
from service_sdk.contract import Header, Topics

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


@dataclass
class Relaying:
    relay: OutboxRelay
    store: SagaStore
    topic: str


@pytest.fixture
async def relaying(coordinator_settings: Settings) -> AsyncIterator[Relaying]:
    """A relay that sweeps only when told, having taken what was pending at its start."""
    async with _relaying(coordinator_settings) as relaying:
        await relaying.relay.drain()
        yield relaying


@asynccontextmanager
async def _relaying(settings: Settings) -> AsyncIterator[Relaying]:
    kafka = settings.kafka
    await ensure_topics(kafka.bootstrap_servers, [(_topic(settings), 1)])
    engine = create_engine(settings.database.url, pool_size=2)
    producers = coordinator_producers(kafka)
    store = SagaStore(engine)
    relay = OutboxRelay(store, producers, RelaySettings(sweep_interval_s=3_600), SystemClock())
    try:
        yield Relaying(relay, store, _topic(settings))
    finally:
        await producers.stop()
        await engine.dispose()


def _topic(settings: Settings) -> str:
    return Topics(settings.kafka.topic_prefix).commands("relayed")


def _message(topic: str, name: str, size: int = 10) -> OutboxMessage:
    return OutboxMessage(
        saga_id=f"saga-{name}",
        topic=topic,
        key=name.encode(),
        value=name.encode().ljust(size, b"."),
        headers={Header.STEP: "step", Header.COMMAND_ID: f"c-{name}"},
        message_id=f"m-{name}",
    )


async def _write(store: SagaStore, *messages: OutboxMessage, hand_over: bool) -> list[int]:
    """Commit outbox rows (and their sagas): handed to ``store.on_committed`` or, like
    another process, not."""
    sagas = [
        SagaInstance(m.saga_id, "relayed", 1, SagaStatus.RUNNING, {}, NOW, NOW) for m in messages
    ]
    transaction = store.transaction() if hand_over else store.engine.begin()
    async with transaction as conn:
        await store.insert_sagas(conn, sagas)
        return await store.write_changes(conn, [], [], messages, NOW)


async def _unsent(store: SagaStore) -> int:
    async with store.engine.connect() as conn:
        unsent, _ = await store.select_outbox_stats(conn, NOW)
    return unsent


@contextmanager
def _statements(store: SagaStore) -> Iterator[list[str]]:
    seen: list[str] = []

    def record(*args: Any) -> None:
        seen.append(args[2])

    target = store.engine.sync_engine
    event.listen(target, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(target, "before_cursor_execute", record)


async def test_rows_handed_over_are_published_from_memory_and_then_deleted(
    relaying: Relaying, topic_reader: Any
) -> None:
    relay, store, topic = relaying.relay, relaying.store, relaying.topic
    store.on_committed = relay.hand_over

    async with topic_reader(topic) as reader:
        await _write(store, _message(topic, "a"), _message(topic, "b"), hand_over=True)
        with _statements(store) as statements:
            assert await relay.drain() == 2
        records = await reader.published()

    assert [r.value for r in records] == [b"a.........", b"b........."]
    assert await _unsent(store) == 0
    # Sent, then deleted by id: never taken (locked and read back) from the table.
    assert not [s for s in statements if "FOR UPDATE" in s]
    assert [s.split()[0] for s in statements] == ["DELETE"]


async def test_a_row_kafka_refuses_from_memory_is_set_aside_and_the_rest_goes_out(
    relaying: Relaying, topic_reader: Any
) -> None:
    relay, store, topic = relaying.relay, relaying.store, relaying.topic
    store.on_committed = relay.hand_over
    oversized = _message(topic, "big", size=2_000_000)  # twice what the producer may send

    async with (
        topic_reader(topic) as reader,
        topic_reader(Topics.dead_letters(topic)) as dead_letters,
    ):
        await _write(store, oversized, _message(topic, "after"), hand_over=True)
        assert await relay.drain() == 2
        (record,) = await reader.published()
        (letter,) = await dead_letters.records(1)

    assert record.value == b"after....."
    assert letter.key == b"big"
    assert relay.set_aside == 1
    assert await _unsent(store) == 0


async def test_a_sweep_takes_only_rows_pending_since_the_sweep_before(
    relaying: Relaying, topic_reader: Any
) -> None:
    relay, store, topic = relaying.relay, relaying.store, relaying.topic
    assert await relay.sweep() == 0

    async with topic_reader(topic) as reader:
        # Committed by another coordinator, which publishes it from memory: not this sweep's.
        await _write(store, _message(topic, "theirs"), hand_over=False)
        assert await relay.sweep() == 0
        assert await _unsent(store) == 1
        # Still pending a sweep later: its writer is gone, so this relay publishes it.
        assert await relay.sweep() == 1
        (record,) = await reader.published()

    assert record.value == b"theirs...."
    assert await _unsent(store) == 0


async def test_a_wake_takes_every_pending_row_at_once(
    relaying: Relaying, topic_reader: Any
) -> None:
    relay, store, topic = relaying.relay, relaying.store, relaying.topic

    async with topic_reader(topic) as reader:
        await _write(store, _message(topic, "x"), _message(topic, "y"), hand_over=False)
        assert await relay.drain() == 0
        relay.wake()
        assert await relay.drain() == 2
        records = await reader.published()

    assert [r.value for r in records] == [b"x.........", b"y........."]


async def test_rows_another_relay_took_are_not_published_again_from_memory(
    relaying: Relaying, coordinator_settings: Settings, topic_reader: Any
) -> None:
    relay, store, topic = relaying.relay, relaying.store, relaying.topic
    store.on_committed = relay.hand_over

    async with _relaying(coordinator_settings) as other, topic_reader(topic) as reader:
        await _write(store, _message(topic, "p"), _message(topic, "q"), hand_over=True)
        # Another coordinator's relay, woken (e.g. by an operator's action), takes every
        # pending row before this one publishes what was handed over to it.
        other.relay.wake()
        assert await other.relay.drain() == 2
        assert await relay.drain() == 0
        await _write(store, _message(topic, "r"), hand_over=True)
        assert await relay.drain() == 1
        records = await reader.published()

    assert [r.value for r in records] == [b"p.........", b"q.........", b"r........."]
    assert await _unsent(store) == 0


async def test_a_record_within_max_message_bytes_is_published_beyond_aiokafkas_default(
    coordinator_settings: Settings, topic_reader: Any
) -> None:
    # An operator who raised the broker's limit and SAGA_KAFKA__MAX_MESSAGE_BYTES to match.
    kafka = coordinator_settings.kafka.model_copy(update={"max_message_bytes": 1_500_000})
    settings = coordinator_settings.model_copy(update={"kafka": kafka})
    topic = Topics(kafka.topic_prefix).commands("large")
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(topic, 1, 1, topic_configs={"max.message.bytes": "2000000"})]
        )
    finally:
        await admin.close()
    large = _message(topic, "large", size=1_200_000)  # beyond aiokafka's 1 MiB default

    async with _relaying(settings) as relaying, topic_reader(topic) as reader:
        relaying.store.on_committed = relaying.relay.hand_over
        await _write(relaying.store, large, hand_over=True)
        assert await relaying.relay.drain() == 1
        (record,) = await reader.published()

    assert relaying.relay.set_aside == 0
    assert record.value == large.value
