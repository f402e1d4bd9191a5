"""Fixtures for tests that run the coordinator in-process against real Kafka + PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import TYPE_CHECKING, Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from coordinator.app import Coordinator
from coordinator.config import (
    DatabaseSettings,
    HttpSettings,
    KafkaSettings,
    RelaySettings,
    Settings,
)
from coordinator.core.clock import Clock
from coordinator.core.definition import SagaRegistry
from coordinator.store.migrate import upgrade_database
from saga_defs import default_registry
from service_sdk import Envelope, decode_envelope, encode_headers
from tests.support.waiting import eventually

if TYPE_CHECKING:
    from coordinator.devstack import KafkaService


@pytest.fixture
async def coordinator_settings(
    kafka: KafkaService, topic_prefix: str, database_url: str
) -> Settings:
    """Settings for a coordinator on this test's topics and a freshly migrated database.

    Its HTTP API listens on 127.0.0.1 at a free port (``coordinator.http.port`` once started)
    without a token (mutating endpoints refused); set ``settings.http.token`` to use them.
    """
    await upgrade_database(database_url)
    session_timeout = 6_000 if kafka.supports_idempotence else 3_000
    return Settings(
        kafka=KafkaSettings(
            bootstrap_servers=kafka.bootstrap_servers,
            idempotent=kafka.supports_idempotence,
            topic_prefix=topic_prefix,
            group_id=f"{topic_prefix}saga-coordinator",
            reply_partitions=4,
            command_partitions=4,
            session_timeout_ms=session_timeout,
            heartbeat_interval_ms=500,
        ),
        database=DatabaseSettings(url=database_url, pool_size=4),
        relay=RelaySettings(sweep_interval_s=0.5),
        http=HttpSettings(host="127.0.0.1", port=0),
    )


@contextlib.asynccontextmanager
async def serving(
    settings: Settings, registry: SagaRegistry | None = None, clock: Clock | None = None
) -> AsyncIterator[Coordinator]:
    """A started coordinator serving in the background; drained and stopped on exit.

    ``registry`` defaults to :func:`saga_defs.default_registry`, ``clock`` to the system clock.
    """
    stop = asyncio.Event()
    registry = registry if registry is not None else default_registry()
    async with Coordinator(settings, registry, clock) as coordinator:
        task = asyncio.create_task(coordinator.serve(stop))
        try:
            yield coordinator
        finally:
            stop.set()
            await task


@pytest.fixture
def running_coordinator() -> Callable[..., contextlib.AbstractAsyncContextManager[Coordinator]]:
    """``async with running_coordinator(settings[, registry][, clock]) as c:`` runs a
    coordinator in the test."""
    return serving


class TopicReader:
    """Reads envelopes (or raw records) from one topic from its beginning, without a group."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
        )
        self.topic = topic

    async def __aenter__(self) -> TopicReader:
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def records(self, count: int, timeout_s: float = 30.0) -> list[Any]:
        """The next ``count`` records (more if the last fetch brought more); fails if fewer
        arrive within ``timeout_s``."""
        found: list[Any] = []

        async def enough() -> bool:
            batch = await self._consumer.getmany(timeout_ms=200)
            for records in batch.values():
                found.extend(records)
            assert len(found) >= count, f"{len(found)} of {count} record(s)"
            return True

        await eventually(enough, timeout=timeout_s, interval=0, what=f"records on {self.topic}")
        return found

    async def envelopes(self, count: int, timeout_s: float = 30.0) -> list[Envelope]:
        """Exactly ``count`` decoded envelopes."""
        return [decode_envelope(r.value) for r in await self.records(count, timeout_s)]

    async def published(self, timeout_s: float = 30.0) -> list[Any]:
        """The records not read yet up to the topic's end as of now: everything published so
        far. Once the producers in question have stopped (or are known to be idle), this is
        all they will ever have sent, with no quiet period to guess."""
        partitions = await eventually(self._consumer.assignment, what=f"{self.topic} assigned")
        ends = await self._consumer.end_offsets(list(partitions))
        found: list[Any] = []

        async def at_end() -> bool:
            behind = {
                tp: end for tp, end in ends.items() if await self._consumer.position(tp) < end
            }
            if behind:
                batch = await self._consumer.getmany(*behind, timeout_ms=200)
                for records in batch.values():
                    found.extend(records)
            assert not behind, f"still behind the end offsets {behind}"
            return True

        await eventually(at_end, timeout=timeout_s, interval=0, what=f"the end of {self.topic}")
        return found

    async def quiet(self, seconds: float) -> list[Any]:
        """Whatever arrives within ``seconds``."""
        found: list[Any] = []
        end = asyncio.get_running_loop().time() + seconds
        while asyncio.get_running_loop().time() < end:
            batch = await self._consumer.getmany(timeout_ms=200)
            for records in batch.values():
                found.extend(records)
        return found


@pytest.fixture
def topic_reader(kafka: KafkaService) -> Callable[[str], TopicReader]:
    """``async with topic_reader(topic) as reader:`` reads a topic from the beginning."""
    return lambda topic: TopicReader(kafka.bootstrap_servers, topic)


@pytest.fixture
async def producer(kafka_producer_settings: dict[str, Any]) -> AsyncIterator[AIOKafkaProducer]:
    """A started producer for the session's broker."""
    producer = AIOKafkaProducer(**kafka_producer_settings)
    await producer.start()
    yield producer
    await producer.stop()


@pytest.fixture
def send_envelope(
    producer: AIOKafkaProducer,
) -> Callable[[str, Envelope], Coroutine[Any, Any, None]]:
    """``await send_envelope(topic, envelope)`` sends it as participants do (keyed by saga
    id, routing headers set) and waits for the broker's ack."""

    async def send(topic: str, envelope: Envelope) -> None:
        await producer.send_and_wait(
            topic,
            envelope.to_bytes(),
            key=envelope.key(),
            headers=encode_headers(envelope.headers()),
        )

    return send
