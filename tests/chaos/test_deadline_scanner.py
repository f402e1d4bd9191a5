"""Deadlines live in PostgreSQL: they survive a coordinator restart, and several scanners over
one database fire each of them exactly once.

Time is a :class:`~coordinator.core.clock.FakeClock` shared by the coordinators and scanners
of a test: a deadline passes when the test advances the clock, never by sleeping, and none
passes that the test did not move the clock past.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest
import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer
from pydantic import BaseModel

from coordinator.app import Coordinator
from coordinator.config import DatabaseSettings, DeadlineSettings, KafkaSettings, Settings
from coordinator.core.clock import FakeClock
from coordinator.core.definition import RetryPolicy, SagaDefinition, SagaRegistry, Step
from coordinator.core.state import HistoryKind, SagaStatus
from coordinator.ops.client import start_request
from coordinator.runtime.deadlines import DeadlineScanner
from coordinator.store.database import create_engine
from coordinator.store.migrate import upgrade_database
from coordinator.store.saga_store import SagaStore
from coordinator.store.schema import saga_history, saga_instance
from service_sdk import Command, Envelope, Topics, decode_envelope
from tests.support.outbox import outbox_sent
from tests.support.waiting import eventually

TIMEOUT = timedelta(seconds=3)
SAGAS = 200


class Ping(Command):
    """The probe's only command."""

    message_type: ClassVar[str] = "probe.ping"
    label: str


class ProbeData(BaseModel):
    label: str


class ProbeSaga(SagaDefinition[ProbeData]):
    """One step that nobody answers. A missed deadline re-sends it; the next deadline is a
    minute later, far beyond any test, so each saga expires exactly once here."""

    name = "probe"
    data_model = ProbeData
    steps = (
        Step[ProbeData](
            name="ping",
            service="probe",
            command=Ping,
            build=lambda d: Ping(label=d.label),
            timeout=TIMEOUT,
            retry=RetryPolicy(
                max_attempts=3,
                initial_backoff=timedelta(seconds=60),
                max_backoff=timedelta(seconds=60),
            ),
        ),
    )


class RetiredSaga(SagaDefinition[ProbeData]):
    """A saga type some coordinator sharing the database runs, but not the one under test
    (removed in this version, or added in the next one of a rolling deploy)."""

    name = "retired"
    data_model = ProbeData
    steps = ProbeSaga.steps


REGISTRY = SagaRegistry([ProbeSaga])


async def _settings(kafka: Any, topic_prefix: str, database_url: str, scan_s: float) -> Settings:
    await upgrade_database(database_url)
    return Settings(
        kafka=KafkaSettings(
            bootstrap_servers=kafka.bootstrap_servers,
            idempotent=kafka.supports_idempotence,
            topic_prefix=topic_prefix,
            group_id=f"{topic_prefix}saga-coordinator",
            reply_partitions=4,
            command_partitions=4,
            session_timeout_ms=6_000 if kafka.supports_idempotence else 3_000,
            heartbeat_interval_ms=500,
        ),
        database=DatabaseSettings(url=database_url, pool_size=4),
        deadlines=DeadlineSettings(scan_interval_s=scan_s),
    )


def _clock() -> FakeClock:
    return FakeClock(datetime.now(UTC))


def _past(clock: FakeClock, deadline: datetime) -> None:
    """Move ``clock`` just past ``deadline``."""
    clock.advance(max(deadline - clock.now(), timedelta(0)) + timedelta(milliseconds=1))


@contextlib.asynccontextmanager
async def _serving(
    settings: Settings, clock: FakeClock, registry: SagaRegistry = REGISTRY
) -> AsyncIterator[Coordinator]:
    stop = asyncio.Event()
    async with Coordinator(settings, registry, clock) as coordinator:
        task = asyncio.create_task(coordinator.serve(stop))
        try:
            yield coordinator
        finally:
            stop.set()
            await task


@contextlib.asynccontextmanager
async def _reading(kafka: Any, topic: str) -> AsyncIterator[AIOKafkaConsumer]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka.bootstrap_servers, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()


async def _read(consumer: AIOKafkaConsumer, seen: list[Envelope], until: int) -> list[Envelope]:
    """Read into ``seen`` until it holds ``until`` envelopes."""

    async def enough() -> bool:
        batch = await consumer.getmany(timeout_ms=200)
        seen.extend(decode_envelope(r.value) for rs in batch.values() for r in rs)
        assert len(seen) >= until, f"{len(seen)} of {until} command(s)"
        return True

    await eventually(enough, interval=0, what="the commands")
    return seen


async def _read_rest(store: SagaStore, consumer: AIOKafkaConsumer, seen: list[Envelope]) -> None:
    """Read into ``seen`` everything the coordinator has sent: once no outbox row is unsent,
    all of it is on the topic, up to the end offsets of now."""
    await outbox_sent(store)
    ends = await consumer.end_offsets(list(consumer.assignment()))

    async def at_end() -> bool:
        behind = [tp for tp, end in ends.items() if await consumer.position(tp) < end]
        if behind:
            batch = await consumer.getmany(*behind, timeout_ms=200)
            seen.extend(decode_envelope(r.value) for rs in batch.values() for r in rs)
        assert not behind, f"still behind the end offsets on {behind}"
        return True

    await eventually(at_end, interval=0, what="the end of the command topic")


async def test_a_deadline_missed_while_no_coordinator_runs_fires_after_a_restart(
    kafka: Any, topic_prefix: str, database_url: str
) -> None:
    settings = await _settings(kafka, topic_prefix, database_url, scan_s=0.2)
    topic = Topics(topic_prefix).commands("probe")
    clock = _clock()
    seen: list[Envelope] = []
    async with _serving(settings, clock) as first, _reading(kafka, topic) as pings:
        saga_id = await first.client.start("probe", ProbeData(label="restart"), saga_id="r-1")
        await _read(pings, seen, 1)
    # The coordinator has stopped (gracefully) while the saga awaits its reply.
    engine = create_engine(database_url, pool_size=1)
    store = SagaStore(engine)
    try:
        async with engine.connect() as conn:
            waiting = await store.select_saga(conn, saga_id)
        assert waiting is not None
        assert waiting.deadline_at is not None
        assert (waiting.status, waiting.attempt) == (SagaStatus.RUNNING, 1), (
            "the deadline fired before the coordinator stopped; the test proves nothing"
        )
        # The deadline passes while no coordinator runs.
        _past(clock, waiting.deadline_at)
        async with engine.connect() as conn:
            assert await store.select_saga(conn, saga_id) == waiting
    finally:
        await engine.dispose()

    async with _serving(settings, clock) as second, _reading(kafka, topic) as pings:
        seen = await _read(pings, [], 2)
        await _read_rest(second.store, pings, seen)
        async with second.store.engine.connect() as conn:
            history = await second.store.select_history(conn, saga_id)
    assert [(e.attempt, e.command_id) for e in seen] == [
        (1, waiting.command_id),
        (2, waiting.command_id),
    ]
    missed = [h for h in history if h.kind == HistoryKind.DEADLINE_MISSED.value]
    assert [(h.step, h.detail["attempt"]) for h in missed] == [("ping", 1)]
    assert second.deadlines.fired == 1


async def test_concurrent_scanners_fire_each_deadline_exactly_once(
    kafka: Any, topic_prefix: str, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The hub coordinator starts the sagas and relays the outbox; its own scanner makes its
    # first scan at start, before any deadline is due, and then sleeps through the test.
    settings = await _settings(kafka, topic_prefix, database_url, scan_s=3_600)
    topics = Topics(topic_prefix)
    clock = _clock()
    # Each contender has its own connection pool, as separate coordinator processes would.
    engines = [create_engine(database_url, pool_size=2) for _ in range(3)]
    caplog.set_level(logging.WARNING, logger="coordinator")
    seen: list[Envelope] = []
    try:
        async with (
            _serving(settings, clock) as hub,
            _reading(kafka, topics.commands("probe")) as pings,
        ):
            contenders = [
                DeadlineScanner(
                    SagaStore(engine),
                    REGISTRY,
                    topics,
                    clock,
                    DeadlineSettings(scan_interval_s=0.05, batch_size=10),
                    on_commit=lambda _: hub.relay.wake(),
                )
                for engine in engines
            ]
            starts = [
                start_request("probe", ProbeData(label=f"s{i}"), saga_id=f"due-{i:03d}")
                for i in range(SAGAS)
            ]
            outcome = await hub.processor.process(starts)
            assert outcome.rejections == []
            hub.relay.wake()
            await _read(pings, seen, SAGAS)
            # On the topic is not yet marked sent: the relay commits that after the acks, and
            # a deadline of a command still unsent is postponed, not fired.
            await outbox_sent(hub.store)
            async with hub.store.engine.connect() as conn:
                latest = await conn.scalar(sa.select(sa.func.max(saga_instance.c.deadline_at)))
            assert latest is not None
            _past(clock, latest)
            # Every deadline is due now: the scanners start together and contend for them.
            tasks = [asyncio.create_task(s.run()) for s in contenders]
            try:
                await _read(pings, seen, 2 * SAGAS)
            finally:
                for scanner in contenders:
                    scanner.stop()
                await asyncio.gather(*tasks)
            await _read_rest(hub.store, pings, seen)
            async with hub.store.engine.connect() as conn:
                history = (
                    await conn.execute(
                        sa.select(
                            saga_history.c.saga_id,
                            saga_history.c.kind,
                            saga_history.c.detail["attempt"].as_integer(),
                            saga_history.c.detail["deadline"].as_boolean(),
                        )
                    )
                ).all()
                attempts: Counter[int] = Counter(
                    (await conn.scalars(sa.select(saga_instance.c.attempt))).all()
                )
    finally:
        for engine in engines:
            await engine.dispose()

    sends = Counter((e.saga_id, e.attempt) for e in seen)
    assert len(seen) == 2 * SAGAS, f"{len(seen) - 2 * SAGAS} extra command(s) were sent"
    assert set(sends.values()) == {1}
    assert {attempt for _, attempt in sends} == {1, 2}
    assert attempts == {2: SAGAS}
    missed = Counter(
        (saga_id, attempt)
        for saga_id, kind, attempt, _ in history
        if kind == HistoryKind.DEADLINE_MISSED.value
    )
    assert len(missed) == SAGAS
    assert set(missed.values()) == {1}
    assert {attempt for _, attempt in missed} == {1}
    stale = [row for row in history if row[1] == HistoryKind.STALE_DEADLINE.value]
    assert stale == [], "a deadline was fired twice (caught by the engine's attempt check)"
    fired = [s.fired for s in contenders]
    assert sum(fired) == SAGAS
    assert sum(1 for f in fired if f > 0) >= 2, f"no contention happened: {fired}"
    assert [
        r.getMessage() for r in caplog.records if r.name == "coordinator.runtime.deadlines"
    ] == []


async def test_due_sagas_of_a_type_the_scanner_does_not_run_do_not_hold_back_the_others(
    kafka: Any, topic_prefix: str, database_url: str
) -> None:
    # The hub knows both types (it starts the sagas); its own scanner sleeps through the test.
    settings = await _settings(kafka, topic_prefix, database_url, scan_s=3_600)
    clock = _clock()
    async with _serving(settings, clock, SagaRegistry([ProbeSaga, RetiredSaga])) as hub:
        # More due sagas of the unknown type than a scan takes, all due before the known one.
        retired = [
            start_request("retired", ProbeData(label=f"old{i}"), saga_id=f"old-{i}")
            for i in range(12)
        ]
        assert (await hub.processor.process(retired)).rejections == []
        await hub.client.start("probe", ProbeData(label="new"), saga_id="new")
        async with hub.store.engine.connect() as conn:
            known = await hub.store.select_saga(conn, "new")
        assert known is not None
        assert known.deadline_at is not None
        # Sent, so the deadlines are for commands a participant could have answered.
        await outbox_sent(hub.store)
        _past(clock, known.deadline_at)
        scanner = DeadlineScanner(
            hub.store,
            REGISTRY,
            Topics(topic_prefix),
            clock,
            DeadlineSettings(scan_interval_s=0.05, batch_size=5),
            on_commit=lambda _: fired.set(),
        )
        fired = asyncio.Event()
        task = asyncio.create_task(scanner.run())
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fired.wait(), 10)
        finally:
            scanner.stop()
            await task
        async with hub.store.engine.connect() as conn:
            rows = await conn.execute(sa.select(saga_instance.c.saga_id, saga_instance.c.attempt))
            attempts: dict[str, int] = {row.saga_id: row.attempt for row in rows}
    assert attempts["new"] == 2, "the known saga's deadline never fired"
    assert scanner.fired == 1
    assert {attempts[f"old-{i}"] for i in range(12)} == {1}, "another type's deadline fired"
