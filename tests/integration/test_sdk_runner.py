"""The participant runtime against real Kafka and PostgreSQL: replies, de-duplication by
command id, rollback on rejection, dead letters, deferred replies, committed offsets,
tombstones (compensations and fences that overtake their command, the batch look-ahead),
heartbeats, and outages (a producer whose idempotence state the broker lost, replies Kafka did
not acknowledge, a database or a broker that is down or starting up)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaTimeoutError, OutOfOrderSequenceNumber
from pydantic import BaseModel
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from service_sdk import (
    FENCE_MESSAGE_TYPE,
    BatchContext,
    BatchResult,
    Command,
    CommandRejected,
    DeadLetterHeader,
    Deferred,
    Envelope,
    HandlerContext,
    Header,
    KafkaConfig,
    MessageKind,
    Outcome,
    Service,
    ServiceRunner,
    Topics,
    decode_envelope,
    decode_headers,
    encode_headers,
)
from service_sdk.contract import Heartbeat
from service_sdk.errors import CommandFencedError
from service_sdk.service import Fence
from service_sdk.testing import command_envelope
from tests.support.waiting import eventually

if TYPE_CHECKING:
    from coordinator.devstack import KafkaService, TopicFactory

Mode = Literal["ok", "reject", "retry", "boom", "defer", "held", "bad", "slow"]

SERVICE = Service("sdkprobe", schema="sdkprobe")
CALLS: Counter[str] = Counter()
"""Handler runs per command id (ids are unique per test)."""
STARTED: dict[str, float] = {}
"""When a ``slow`` handler started (wall clock), per command id."""
GATES: dict[str, asyncio.Event] = {}
"""Per key, what a ``held`` handler waits for before it returns (and its transaction commits)."""


class Touch(Command):
    message_type: ClassVar[str] = "sdkprobe.touch"
    key: str
    mode: Mode = "ok"


class Touched(BaseModel):
    key: str
    run: int


@SERVICE.handles(Touch)
async def touch(cmd: Touch, ctx: HandlerContext) -> Touched | Deferred:
    CALLS[ctx.command_id] += 1
    await ctx.connection.execute(
        text("INSERT INTO sdkprobe.effects (key, command_id) VALUES (:key, :command_id)"),
        {"key": cmd.key, "command_id": ctx.command_id},
    )
    if cmd.mode == "reject":
        raise CommandRejected("touch refused", data={"key": cmd.key})
    if cmd.mode == "retry":
        raise CommandRejected("try again", retryable=True)
    if cmd.mode == "boom":
        raise RuntimeError(f"boom on {cmd.key}")
    if cmd.mode == "defer":
        return ctx.defer()
    if cmd.mode == "held":
        await GATES[cmd.key].wait()
    if cmd.mode == "slow":
        STARTED[ctx.command_id] = time.time()
        await asyncio.sleep(0.15)
    if cmd.mode == "bad":
        return 42  # type: ignore[return-value]  # not a reply: an error after the handler
    return Touched(key=cmd.key, run=CALLS[ctx.command_id])


class Untouch(Command):
    """The compensation of Touch: removes the effects of its key."""

    message_type: ClassVar[str] = "sdkprobe.untouch"
    key: str


@SERVICE.handles(Untouch)
async def untouch(cmd: Untouch, ctx: HandlerContext) -> dict[str, int]:
    CALLS[ctx.command_id] += 1
    result = await ctx.connection.execute(
        text("DELETE FROM sdkprobe.effects WHERE key = :key"), {"key": cmd.key}
    )
    return {"undone": result.rowcount}


class TouchMany(Command):
    """Answered by a batch handler: one statement for all the commands of a run."""

    message_type: ClassVar[str] = "sdkprobe.touch_many"
    key: str
    mode: Literal["ok", "reject", "boom"] = "ok"


BATCHES: list[list[str]] = []
"""The keys of each call of the batch handler, in order."""


@SERVICE.handles_batch(TouchMany)
async def touch_many(commands: Sequence[TouchMany], ctx: BatchContext) -> list[BatchResult]:
    BATCHES.append([cmd.key for cmd in commands])
    for cmd, command in zip(commands, ctx.commands, strict=True):
        CALLS[command.command_id] += 1
        if cmd.mode == "boom":
            raise RuntimeError(f"boom on {cmd.key}")
    taken = [(cmd, c) for cmd, c in zip(commands, ctx.commands, strict=True) if cmd.mode == "ok"]
    await ctx.connection.execute(
        text(
            "INSERT INTO sdkprobe.effects (key, command_id) "
            "SELECT * FROM unnest(CAST(:keys AS text[]), CAST(:ids AS text[]))"
        ),
        {"keys": [cmd.key for cmd, _ in taken], "ids": [c.command_id for _, c in taken]},
    )
    return [
        Touched(key=cmd.key, run=CALLS[c.command_id])
        if cmd.mode == "ok"
        else CommandRejected("touch refused", data={"key": cmd.key})
        for cmd, c in zip(commands, ctx.commands, strict=True)
    ]


@dataclass
class RecordingObserver:
    results: list[tuple[str, str]] = field(default_factory=list)
    failures: list[int] = field(default_factory=list)
    dead: list[str] = field(default_factory=list)

    def command_processed(self, message_type: str, result: str, duration_s: float) -> None:
        self.results.append((message_type, result))

    def handler_failed(self, message_type: str, attempt: int) -> None:
        self.failures.append(attempt)

    def dead_lettered(self, topic: str, reason: str) -> None:
        self.dead.append(reason)


@dataclass
class Harness:
    kafka: KafkaConfig
    engine: AsyncEngine
    topics: Topics
    producer: AIOKafkaProducer
    consumer_settings: dict[str, Any]
    observer: RecordingObserver
    runners: list[ServiceRunner] = field(default_factory=list)

    @property
    def commands(self) -> str:
        return self.topics.commands(SERVICE.name)

    @property
    def dlq(self) -> str:
        return Topics.dead_letters(self.commands)

    async def start_runner(self, **options: Any) -> ServiceRunner:
        options = {
            "handler_attempts": 2,
            "handler_backoff_s": 0.05,
            "kafka": self.kafka,
            "engine": self.engine,
            **options,
        }
        runner = ServiceRunner(SERVICE, topics=self.topics, observer=self.observer, **options)
        self.runners.append(runner)
        await runner.start()
        return runner

    async def send(self, envelope: Envelope) -> None:
        await self.producer.send_and_wait(
            self.commands,
            envelope.to_bytes(),
            key=envelope.key(),
            headers=encode_headers(envelope.headers()),
        )

    async def send_raw(self, value: bytes, key: bytes) -> None:
        await self.producer.send_and_wait(self.commands, value, key=key)

    async def read(self, topic: str, count: int, wait_s: float = 30.0) -> list[Any]:
        """Every record of ``topic`` once at least ``count`` are there (from the start)."""
        return await self.read_until(
            topic, lambda records: len(records) >= count, f"{count} record(s)", wait_s
        )

    async def read_until(
        self,
        topic: str,
        done: Callable[[list[Any]], bool],
        what: str,
        wait_s: float = 30.0,
    ) -> list[Any]:
        """Records of ``topic`` from the start, in each partition's order, until ``done``."""
        consumer = AIOKafkaConsumer(
            **self.consumer_settings, enable_auto_commit=False, auto_offset_reset="earliest"
        )
        await consumer.start()
        records: list[Any] = []

        async def read_enough() -> bool:
            batch = await consumer.getmany(timeout_ms=200)
            for partition_records in batch.values():
                records.extend(partition_records)
            assert done(records), f"{topic}: {len(records)} record(s), expected {what}"
            return True

        try:
            consumer.subscribe([topic])
            await eventually(read_enough, timeout=wait_s, interval=0, what=f"{what} on {topic}")
        finally:
            await consumer.stop()
        return records

    async def heartbeats_until(
        self, done: Callable[[list[Heartbeat]], bool], what: str
    ) -> list[tuple[Any, Heartbeat]]:
        """The heartbeat records from the start, with their heartbeats, until ``done``."""

        def enough(records: list[Any]) -> bool:
            return done([Heartbeat.model_validate_json(r.value) for r in records])

        records = await self.read_until(self.topics.heartbeats, enough, what)
        return [(r, Heartbeat.model_validate_json(r.value)) for r in records]

    async def replies(self, count: int) -> list[Envelope]:
        return [decode_envelope(r.value) for r in await self.read(self.topics.replies, count)]

    async def replies_through(self, key: str) -> list[Envelope]:
        """The replies on the topic up to and including the first one answering ``key``."""

        def answered(records: list[Any]) -> bool:
            return any(decode_envelope(r.value).payload.get("key") == key for r in records)

        records = await self.read_until(self.topics.replies, answered, f"a reply to {key!r}")
        replies = [decode_envelope(r.value) for r in records]
        keys = [reply.payload.get("key") for reply in replies]
        return replies[: keys.index(key) + 1]

    async def assigned(self, runner: ServiceRunner) -> None:
        """Wait until ``runner``'s consumer has joined its group and holds partitions."""
        await eventually(
            lambda: runner._consumer.assignment(),
            what=f"group {runner.group_id} to assign partitions",
        )

    async def lock_waits(self, table: str) -> list[str]:
        """Statements on ``table`` now waiting on another transaction's lock."""
        # A connection per look: pg_stat_activity is a snapshot kept until the transaction ends.
        async with self.engine.connect() as conn:
            result = await conn.execute(
                text(
                    "SELECT query FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock' "
                    "AND position(:table in query) > 0"
                ),
                {"table": table},
            )
            return list(result.scalars())

    async def replies_to(self, saga_id: str, count: int) -> list[Envelope]:
        """Replies of one saga; ``count`` counts every reply on the topic."""
        return [reply for reply in await self.replies(count) if reply.saga_id == saga_id]

    async def effects(self, key: str) -> int:
        async with self.engine.connect() as conn:
            result = await conn.execute(
                text("SELECT count(*) FROM sdkprobe.effects WHERE key = :key"), {"key": key}
            )
            return int(result.scalar_one())

    async def record(self, command_id: str) -> Any:
        async with self.engine.connect() as conn:
            result = await conn.execute(
                text(
                    "SELECT status, reply, message_type, saga_id "
                    "FROM sdkprobe.saga_processed_commands WHERE command_id = :id"
                ),
                {"id": command_id},
            )
            return result.first()


def kafka_config(kafka: KafkaService, consumer_settings: dict[str, Any]) -> KafkaConfig:
    tuning = {
        name: consumer_settings[name]
        for name in ("session_timeout_ms", "heartbeat_interval_ms", "rebalance_timeout_ms")
        if name in consumer_settings
    }
    return KafkaConfig(
        kafka.bootstrap_servers,
        idempotent=kafka.supports_idempotence,
        client_id="sdkprobe-test",
        **tuning,
    )


@pytest.fixture
async def harness(
    kafka: KafkaService,
    fresh_topics: TopicFactory,
    topic_prefix: str,
    db_engine: AsyncEngine,
    kafka_producer_settings: dict[str, Any],
    kafka_consumer_settings: dict[str, Any],
) -> AsyncIterator[Harness]:
    await fresh_topics(
        "sdkprobe.commands",
        "saga.replies",
        "sdkprobe.commands.dlq",
        "saga.heartbeats",
        partitions=2,
    )
    async with db_engine.begin() as conn:
        await conn.execute(text("CREATE SCHEMA IF NOT EXISTS sdkprobe"))
        await conn.execute(
            text(
                "CREATE TABLE sdkprobe.effects (id serial PRIMARY KEY, key text, command_id text,"
                " xid bigint NOT NULL DEFAULT txid_current())"
            )
        )
    producer = AIOKafkaProducer(**kafka_producer_settings)
    await producer.start()
    harness = Harness(
        kafka=kafka_config(kafka, kafka_consumer_settings),
        engine=db_engine,
        topics=Topics(topic_prefix),
        producer=producer,
        consumer_settings=kafka_consumer_settings,
        observer=RecordingObserver(),
    )
    try:
        yield harness
    finally:
        for runner in harness.runners:
            await runner.stop()
        await producer.stop()


def touch_command(
    mode: Mode = "ok",
    *,
    key: str | None = None,
    saga_id: str = "saga-1",
    **options: Any,
) -> Envelope:
    return command_envelope(
        Touch(key=key or f"k-{mode}", mode=mode),
        saga_id=saga_id,
        saga_type="probe",
        step="touch",
        **options,
    )


def undo_command(
    compensates: str,
    *,
    key: str,
    command_id: str,
    fence: bool = False,
    saga_id: str = "saga-1",
) -> Envelope:
    """The compensation (Untouch) or fence the coordinator sends when it gives up on
    ``compensates``."""
    return command_envelope(
        Fence() if fence else Untouch(key=key),
        saga_id=saga_id,
        saga_type="probe",
        step="touch",
        command_id=command_id,
        compensates=compensates,
    )


async def test_command_gets_its_reply(harness: Harness) -> None:
    await harness.start_runner()
    command = touch_command(
        key="a", traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    )
    await harness.send(command)

    (record,) = await harness.read(harness.topics.replies, 1)
    reply = decode_envelope(record.value)
    assert record.key == b"saga-1"
    assert reply.kind is MessageKind.REPLY
    assert reply.outcome is Outcome.SUCCESS
    assert reply.payload == {"key": "a", "run": 1}
    assert (reply.source, reply.message_type) == ("sdkprobe", "sdkprobe.touch")
    assert (reply.saga_id, reply.saga_type, reply.step) == ("saga-1", "probe", "touch")
    assert (reply.command_id, reply.attempt) == (command.command_id, 1)
    assert reply.traceparent == command.traceparent
    assert reply.message_id != command.message_id
    headers = decode_headers(record.headers)
    assert headers[Header.ID] == reply.message_id
    assert headers[Header.OUTCOME] == "success"
    assert headers[Header.COMMAND_ID] == command.command_id

    assert await harness.effects("a") == 1
    assert command.command_id is not None
    row = await harness.record(command.command_id)
    assert (row.status, row.message_type, row.saga_id) == ("done", "sdkprobe.touch", "saga-1")
    assert row.reply["message_id"] == reply.message_id
    assert harness.observer.results == [("sdkprobe.touch", "success")]


async def test_reply_goes_to_reply_to(harness: Harness, fresh_topics: TopicFactory) -> None:
    (elsewhere,) = await fresh_topics("other.replies", partitions=1)
    await harness.start_runner()
    await harness.send(touch_command(key="b", reply_to=elsewhere))
    (record,) = await harness.read(elsewhere, 1)
    assert decode_envelope(record.value).payload["key"] == "b"


async def test_redelivered_command_is_answered_from_the_record(harness: Harness) -> None:
    await harness.start_runner()
    command = touch_command(key="dup", command_id="cmd-dup")
    resend = command.model_copy(update={"message_id": "resend-1", "attempt": 2})
    await harness.send(command)
    await harness.send(command)
    await harness.send(resend)
    await harness.send(touch_command(key="after"))  # same saga, same partition: answered last

    replies = await harness.replies(4)
    assert [r.payload["key"] for r in replies] == ["dup", "dup", "dup", "after"]
    first, second, third, _ = replies
    assert first.message_id == second.message_id == third.message_id
    assert first.payload == second.payload == third.payload == {"key": "dup", "run": 1}
    assert CALLS["cmd-dup"] == 1
    assert await harness.effects("dup") == 1
    results = [result for _, result in harness.observer.results]
    assert results == ["success", "duplicate", "duplicate", "success"]


async def test_overlapping_instances_run_the_handler_once(harness: Harness) -> None:
    # Two groups on one topic: both instances get the command, as two owners of a partition
    # do for a moment during a rebalance. The second waits on the first's claim, then
    # answers from the record.
    for group in ("sdkprobe-a", "sdkprobe-b"):
        await harness.assigned(await harness.start_runner(group_id=group))
    GATES["held"] = gate = asyncio.Event()
    try:
        await harness.send(touch_command("held", key="held", command_id="cmd-held"))
        # The first claimant's handler holds its transaction open until the other instance
        # is seen waiting on the claim.
        await eventually(
            lambda: harness.lock_waits("saga_processed_commands"),
            what="the second instance to wait on the first one's claim",
        )
    finally:
        gate.set()

    first, second = await harness.replies(2)
    assert first.message_id == second.message_id
    assert first.payload == {"key": "held", "run": 1}
    assert CALLS["cmd-held"] == 1
    assert await harness.effects("held") == 1
    assert sorted(result for _, result in harness.observer.results) == ["duplicate", "success"]


async def test_rejection_rolls_back_the_handler_writes(harness: Harness) -> None:
    await harness.start_runner()
    command = touch_command("reject", key="rej", command_id="cmd-rej")
    await harness.send(command)
    await harness.send(command)

    first, second = await harness.replies(2)
    assert first.outcome is Outcome.FAILURE
    assert first.error == "touch refused"
    assert first.payload == {"key": "rej"}
    assert second.message_id == first.message_id
    assert CALLS["cmd-rej"] == 1
    assert await harness.effects("rej") == 0
    row = await harness.record("cmd-rej")
    assert row.status == "done"
    assert row.reply["outcome"] == "failure"


async def test_retryable_rejection_is_not_recorded(harness: Harness) -> None:
    await harness.start_runner()
    command = touch_command("retry", key="rty", command_id="cmd-rty")
    await harness.send(command)
    await harness.send(command.model_copy(update={"message_id": "m-2", "attempt": 2}))

    first, second = await harness.replies(2)
    assert first.outcome is second.outcome is Outcome.RETRYABLE
    assert first.error == "try again"
    assert (first.attempt, second.attempt) == (1, 2)
    assert first.message_id != second.message_id
    assert CALLS["cmd-rty"] == 2
    assert await harness.effects("rty") == 0
    assert await harness.record("cmd-rty") is None


async def test_failing_handler_is_dead_lettered_and_the_next_command_runs(
    harness: Harness,
) -> None:
    runner = await harness.start_runner(handler_attempts=3)
    poison = touch_command("boom", key="boom", command_id="cmd-boom")
    await harness.send(poison)
    await harness.send(touch_command(key="next"))

    (reply,) = await harness.replies(1)
    assert reply.payload["key"] == "next"
    (letter,) = await harness.read(harness.dlq, 1)
    assert letter.value == poison.to_bytes()
    assert letter.key == b"saga-1"
    headers = decode_headers(letter.headers)
    assert headers[Header.ID] == poison.message_id  # the original headers are kept
    assert headers[DeadLetterHeader.REASON] == "handler_error"
    assert headers[DeadLetterHeader.ORIGINAL_TOPIC] == harness.commands
    assert headers[DeadLetterHeader.ORIGINAL_PARTITION] == str(letter.partition)
    assert headers[DeadLetterHeader.ORIGINAL_OFFSET].isdigit()
    assert headers[DeadLetterHeader.ORIGINAL_TIMESTAMP].isdigit()
    assert headers[DeadLetterHeader.ORIGINAL_CONSUMER_GROUP] == runner.group_id
    assert headers[DeadLetterHeader.EXCEPTION_FQCN] == "builtins.RuntimeError"
    assert headers[DeadLetterHeader.EXCEPTION_MESSAGE] == "boom on boom"
    assert "RuntimeError" in headers[DeadLetterHeader.EXCEPTION_STACKTRACE]
    assert CALLS["cmd-boom"] == 3
    assert await harness.effects("boom") == 0
    assert await harness.record("cmd-boom") is None
    assert harness.observer.failures == [1, 2, 3]
    assert harness.observer.dead == ["handler_error"]


async def test_a_batch_is_answered_in_few_transactions_and_a_failure_stays_alone(
    harness: Harness,
) -> None:
    # Queued before the runner starts, so that they arrive in one poll.
    oks = [touch_command(key=f"b{i}", command_id=f"cmd-b{i}") for i in range(12)]
    poison = touch_command("boom", key="b-boom", command_id="cmd-b-boom")
    for command in (*oks[:6], poison, *oks[6:]):
        await harness.send(command)
    sent: list[str] = []

    def record(*args: Any) -> None:
        sent.append(args[2])

    event.listen(harness.engine.sync_engine, "before_cursor_execute", record)
    try:
        await harness.start_runner(handler_attempts=2)
        replies = await harness.replies(12)
    finally:
        event.remove(harness.engine.sync_engine, "before_cursor_execute", record)
    assert sorted(reply.payload["key"] for reply in replies) == sorted(
        c.payload["key"] for c in oks
    )
    (letter,) = await harness.read(harness.dlq, 1)
    assert letter.value == poison.to_bytes()
    async with harness.engine.connect() as conn:
        rows = (
            await conn.execute(text("SELECT key, xid FROM sdkprobe.effects WHERE key LIKE 'b%'"))
        ).all()
    assert sorted(str(key) for key, _ in rows) == sorted(f"b{i}" for i in range(12))
    # One commit for the commands before the failing one and one for those after it (a few
    # more if Kafka handed them over in several polls), not one per command.
    assert len({xid for _, xid in rows}) <= 4
    assert CALLS["cmd-b-boom"] == 2  # its run in the shared transaction was attempt 1
    assert harness.observer.failures == [1, 2]
    # Handlers share the transaction without savepoints: the poison's failure rolled back
    # the commands before it too, which ran again (each effect is there once, above).
    assert all(CALLS[c.command_id or ""] <= 2 for c in oks[:6])
    assert all(CALLS[c.command_id or ""] == 1 for c in oks[6:])
    # Savepoints only for the poison's own runs, of one name: at most three statement texts.
    assert len({text for text in sent if "SAVEPOINT" in text}) <= 3
    assert sum("SAVEPOINT" in text for text in sent) <= 2 * 3


async def test_a_rejection_in_a_batch_undoes_its_own_writes_only(harness: Harness) -> None:
    # The handler writes, then rejects: without a savepoint per command, the shared
    # transaction is rolled back and the others answered again; the rejection keeps no write.
    oks = [touch_command(key=f"r{i}", command_id=f"cmd-r{i}") for i in range(8)]
    refused = touch_command("reject", key="r-refused", command_id="cmd-r-refused")
    for command in (*oks[:4], refused, *oks[4:]):
        await harness.send(command)
    await harness.start_runner()
    replies = await harness.replies(9)
    outcomes = {reply.command_id: reply.outcome for reply in replies}
    assert outcomes.pop("cmd-r-refused") is Outcome.FAILURE
    assert set(outcomes.values()) == {Outcome.SUCCESS}
    assert await harness.effects("r-refused") == 0
    for command in oks:
        assert await harness.effects(command.payload["key"]) == 1
    assert harness.observer.failures == []  # a rejection is an answer, not a failed attempt


def touch_many_command(mode: Literal["ok", "reject", "boom"] = "ok", *, key: str) -> Envelope:
    return command_envelope(
        TouchMany(key=key, mode=mode),
        saga_id="saga-1",
        saga_type="probe",
        step="touch_many",
        command_id=f"cmd-{key}",
    )


async def _effect_xids(harness: Harness, prefix: str) -> set[int]:
    async with harness.engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT xid FROM sdkprobe.effects WHERE key LIKE :prefix"),
            {"prefix": f"{prefix}%"},
        )
        xids: list[Any] = list(rows.scalars())
        return {int(xid) for xid in xids}


async def test_a_batch_handler_answers_a_run_of_commands_in_one_call(harness: Harness) -> None:
    # A refusal is a result, not an error: no rollback, no second run of the others.
    oks = [touch_many_command(key=f"m{i}") for i in range(10)]
    refused = touch_many_command("reject", key="m-refused")
    BATCHES.clear()
    for command in (*oks[:5], refused, *oks[5:]):
        await harness.send(command)
    await harness.start_runner()
    replies = await harness.replies(11)
    outcomes = {reply.command_id: reply.outcome for reply in replies}
    assert outcomes.pop("cmd-m-refused") is Outcome.FAILURE
    assert set(outcomes.values()) == {Outcome.SUCCESS}
    assert len(outcomes) == 10
    assert await harness.effects("m-refused") == 0
    for command in oks:
        assert await harness.effects(command.payload["key"]) == 1
        assert CALLS[command.command_id or ""] == 1
    assert sorted(key for batch in BATCHES for key in batch) == sorted(
        [f"m{i}" for i in range(10)] + ["m-refused"]
    )
    # Kafka may hand the commands over in more than one poll, but not one at a time.
    assert max(len(batch) for batch in BATCHES) > 1
    assert len(await _effect_xids(harness, "m")) == len(BATCHES)
    assert harness.observer.failures == []


async def test_a_failing_batch_handler_fails_only_the_command_that_broke_it(
    harness: Harness,
) -> None:
    # The batch fails as a whole; the SDK answers its commands again one at a time, each in
    # a savepoint, so the others are answered once and the poison one is dead-lettered.
    oks = [touch_many_command(key=f"p{i}") for i in range(10)]
    poison = touch_many_command("boom", key="p-boom")
    BATCHES.clear()
    for command in (*oks[:5], poison, *oks[5:]):
        await harness.send(command)
    await harness.start_runner(handler_attempts=2)
    replies = await harness.replies(10)
    assert sorted(reply.payload["key"] for reply in replies) == sorted(
        c.payload["key"] for c in oks
    )
    assert {reply.outcome for reply in replies} == {Outcome.SUCCESS}
    (letter,) = await harness.read(harness.dlq, 1)
    assert letter.value == poison.to_bytes()
    for command in oks:
        assert await harness.effects(command.payload["key"]) == 1
    assert await harness.effects("p-boom") == 0
    assert ["p-boom"] in BATCHES, "the poison command was not answered alone"
    assert harness.observer.failures == [1, 2]
    assert harness.observer.dead == ["handler_error"]


async def test_replies_of_a_long_batch_go_out_before_its_last_handler_runs(
    harness: Harness,
) -> None:
    # Six handlers of 0.15 s each in one poll: a shared transaction stops taking commands
    # after 0.2 s, so the first replies are committed and published while later commands
    # still wait (a step's timeout runs from its command's pickup).
    commands = [touch_command("slow", key=f"s{i}", command_id=f"cmd-s{i}") for i in range(6)]
    for command in commands:
        await harness.send(command)
    await harness.start_runner()

    records = await harness.read(harness.topics.replies, 6)
    first_reply_ms = min(record.timestamp for record in records)
    assert first_reply_ms / 1000 < STARTED["cmd-s5"], "every reply waited for the whole batch"
    async with harness.engine.connect() as conn:
        xids = (
            await conn.execute(
                text("SELECT DISTINCT xid FROM sdkprobe.effects WHERE key LIKE 's%'")
            )
        ).all()
    assert len(xids) >= 2


async def test_a_result_that_is_no_reply_leaves_no_effect_in_a_batch(harness: Harness) -> None:
    bad = touch_command("bad", key="c-bad", command_id="cmd-c-bad")
    for command in (touch_command(key="c0"), bad, touch_command(key="c1")):
        await harness.send(command)
    await harness.start_runner(handler_attempts=1)

    replies = await harness.replies(2)
    assert sorted(reply.payload["key"] for reply in replies) == ["c0", "c1"]
    (letter,) = await harness.read(harness.dlq, 1)
    assert decode_headers(letter.headers)[DeadLetterHeader.EXCEPTION_FQCN] == "builtins.TypeError"
    assert CALLS["cmd-c-bad"] == 1
    assert await harness.effects("c-bad") == 0
    assert await harness.record("cmd-c-bad") is None


async def test_contract_violations_are_dead_lettered(harness: Harness) -> None:
    await harness.start_runner()
    unknown = touch_command(key="u").model_copy(update={"message_type": "sdkprobe.unknown"})
    bad_schema = touch_command(key="s").model_copy(update={"payload": {"key": 5}})
    not_a_command = touch_command(key="r").model_copy(update={"kind": MessageKind.REPLY})
    # One key for all: one partition, so the last reply means every record was handled.
    await harness.send_raw(b"\xff not json", key=b"saga-1")
    await harness.send(unknown)
    await harness.send(bad_schema)
    await harness.send(not_a_command)
    await harness.send_raw(b"", key=b"saga-1")
    await harness.send(touch_command(key="fine"))

    (reply,) = await harness.replies(1)
    assert reply.payload["key"] == "fine"
    letters = sorted(await harness.read(harness.dlq, 5), key=lambda r: r.offset)
    reasons = [decode_headers(r.headers)[DeadLetterHeader.REASON] for r in letters]
    assert reasons == ["malformed", "unknown_type", "schema", "schema", "malformed"]
    assert letters[0].value == b"\xff not json"
    assert letters[1].value == unknown.to_bytes()
    assert letters[2].value == bad_schema.to_bytes()
    assert all(r.key == b"saga-1" for r in letters)
    fqcns = [decode_headers(r.headers)[DeadLetterHeader.EXCEPTION_FQCN] for r in letters]
    assert fqcns[0] == "service_sdk.contract.errors.MalformedMessageError"
    assert fqcns[1] == "service_sdk.contract.errors.UnknownMessageTypeError"
    assert fqcns[2].endswith("ValidationError")
    assert await harness.effects("u") + await harness.effects("s") == 0


async def test_deferred_command_is_answered_later(harness: Harness) -> None:
    runner = await harness.start_runner()
    command = touch_command("defer", key="def", command_id="cmd-def")
    await harness.send(command)
    await harness.send(command)  # a redelivery while pending: still no answer
    await harness.send(touch_command(key="marker"))

    (marker,) = await harness.replies(1)
    assert marker.payload["key"] == "marker"
    row = await harness.record("cmd-def")
    assert row.status == "pending"
    assert row.reply is None
    assert await harness.effects("def") == 1  # the handler's writes commit with the record

    reply = await runner.complete_later("cmd-def", Touched(key="def", run=99))
    again = await runner.complete_later("cmd-def", {"ignored": True})
    assert again.message_id == reply.message_id
    assert again.payload == {"key": "def", "run": 99}
    await harness.send(command)
    await harness.send(touch_command(key="marker-2"))

    replies = await harness.replies(5)
    deferred = [r for r in replies if r.command_id == "cmd-def"]
    assert len(deferred) == 3
    assert {r.message_id for r in deferred} == {reply.message_id}
    assert deferred[0].outcome is Outcome.SUCCESS
    assert (deferred[0].saga_id, deferred[0].step) == ("saga-1", "touch")
    assert CALLS["cmd-def"] == 1
    assert (await harness.record("cmd-def")).status == "done"
    with pytest.raises(LookupError):
        await runner.complete_later("no-such-command")


async def test_deferred_command_rejected_later(harness: Harness) -> None:
    runner = await harness.start_runner()
    final = touch_command("defer", key="d1", command_id="cmd-d1")
    transient = touch_command("defer", key="d2", command_id="cmd-d2")
    await harness.send(final)
    await harness.send(transient)
    await harness.send(touch_command(key="marker"))
    await harness.replies(1)

    failed = await runner.reject_later("cmd-d1", "out of luck", data={"code": 7})
    assert (failed.outcome, failed.error, failed.payload) == (
        Outcome.FAILURE,
        "out of luck",
        {"code": 7},
    )
    assert (await harness.record("cmd-d1")).status == "done"
    retry = await runner.reject_later("cmd-d2", "later", retryable=True)
    assert retry.outcome is Outcome.RETRYABLE
    assert await harness.record("cmd-d2") is None  # a re-send runs the handler again
    replies = await harness.replies(3)
    answered = sorted(r.command_id or "" for r in replies if r.payload.get("key") != "marker")
    assert answered == ["cmd-d1", "cmd-d2"]


async def test_restart_resumes_after_the_committed_offsets(harness: Harness) -> None:
    first = await harness.start_runner()
    await harness.send(touch_command(key="one"))
    await harness.replies(1)
    await first.stop()
    await first.stop()  # idempotent

    second = await harness.start_runner()
    assert second.group_id == first.group_id == "sdkprobe-service"
    await harness.send(touch_command(key="two"))
    # One saga, one partition, answered in order: a wrongly re-read "one" would be answered
    # before "two", so the replies up to the answer to "two" show it if it happened.
    replies = await harness.replies_through("two")
    assert [r.payload["key"] for r in replies] == ["one", "two"]


async def test_stopped_runner_cannot_restart(harness: Harness) -> None:
    runner = await harness.start_runner()
    await runner.stop()
    with pytest.raises(RuntimeError, match="cannot be started again"):
        await runner.start()


# -- tombstones ----------------------------------------------------------------------------


async def test_compensation_before_its_command_leaves_a_tombstone(harness: Harness) -> None:
    await harness.start_runner()
    command = touch_command(key="late", command_id="cmd-late")
    undo = undo_command("cmd-late", key="late", command_id="cmd-late-undo")
    await harness.send(undo)

    (answer,) = await harness.replies(1)
    assert (answer.command_id, answer.message_type) == ("cmd-late-undo", "sdkprobe.untouch")
    assert answer.outcome is Outcome.SUCCESS
    assert answer.payload == {"fenced": True}
    assert CALLS["cmd-late-undo"] == 0  # nothing to undo: the compensation did not run
    tombstone = await harness.record("cmd-late")
    assert tombstone.status == "fenced"

    # The command arrives after all (a copy and a re-send): refused, its handler never runs.
    await harness.send(command)
    await harness.send(command.model_copy(update={"message_id": "late-resend", "attempt": 2}))
    await harness.send(undo)  # a copy of the undo: answered from its record

    _, first, second, again = await harness.replies(4)
    for refusal in (first, second):
        assert (refusal.command_id, refusal.message_type) == ("cmd-late", "sdkprobe.touch")
        assert refusal.outcome is Outcome.FAILURE
        assert refusal.error is not None
        assert refusal.error.startswith("fenced:")
        assert refusal.payload == {"fenced": True, "fenced_by": "cmd-late-undo"}
    assert second.message_id == first.message_id
    assert again.message_id == answer.message_id
    assert CALLS["cmd-late"] == 0
    assert await harness.effects("late") == 0
    row = await harness.record("cmd-late")
    assert (row.status, row.message_type) == ("fenced", "sdkprobe.touch")
    assert row.reply["message_id"] == first.message_id
    assert harness.observer.results == [
        ("sdkprobe.untouch", "tombstoned"),
        ("sdkprobe.touch", "fenced"),
        ("sdkprobe.touch", "fenced"),
        ("sdkprobe.untouch", "duplicate"),
    ]


async def test_compensation_after_its_command_runs_its_handler(harness: Harness) -> None:
    await harness.start_runner()
    await harness.send(touch_command(key="ran", command_id="cmd-ran"))
    await harness.replies(1)
    assert await harness.effects("ran") == 1

    await harness.send(undo_command("cmd-ran", key="ran", command_id="cmd-ran-undo"))

    _, answer = await harness.replies(2)
    assert answer.command_id == "cmd-ran-undo"
    assert (answer.outcome, answer.payload) == (Outcome.SUCCESS, {"undone": 1})
    assert CALLS["cmd-ran-undo"] == 1
    assert await harness.effects("ran") == 0
    assert (await harness.record("cmd-ran")).status == "done"


async def test_compensation_of_a_refused_command_does_not_run(harness: Harness) -> None:
    await harness.start_runner()
    await harness.send(touch_command("reject", key="no", command_id="cmd-no"))
    (refused,) = await harness.replies(1)  # answered before the undo is sent: not one batch
    await harness.send(undo_command("cmd-no", key="no", command_id="cmd-no-undo"))

    _, answer = await harness.replies(2)
    assert refused.outcome is Outcome.FAILURE
    assert (answer.outcome, answer.payload) == (Outcome.SUCCESS, {"fenced": True})
    assert CALLS["cmd-no-undo"] == 0
    assert (await harness.record("cmd-no")).status == "done"  # its refusal stays as it was


async def test_fence_reports_whether_its_command_ran(harness: Harness) -> None:
    await harness.start_runner()
    await harness.send(touch_command(key="done", command_id="cmd-done"))
    await harness.replies(1)  # answered before the fence is sent: not one batch
    await harness.send(undo_command("cmd-done", key="done", command_id="fence-1", fence=True))
    await harness.send(undo_command("cmd-gone", key="gone", command_id="fence-2", fence=True))
    await harness.send(touch_command(key="gone", command_id="cmd-gone"))

    ran, too_late, fenced, refused = await harness.replies(4)
    assert ran.outcome is Outcome.SUCCESS
    assert (too_late.command_id, too_late.message_type) == ("fence-1", FENCE_MESSAGE_TYPE)
    assert too_late.outcome is Outcome.SUCCESS
    assert too_late.payload == {"fenced": False, "executed": "success"}
    assert await harness.effects("done") == 1  # the effect exists and is not undone
    assert fenced.command_id == "fence-2"
    assert (fenced.outcome, fenced.payload) == (Outcome.SUCCESS, {"fenced": True})
    assert refused.command_id == "cmd-gone"
    assert refused.outcome is Outcome.FAILURE
    assert refused.payload == {"fenced": True, "fenced_by": "fence-2"}
    assert CALLS["cmd-gone"] == 0
    assert await harness.effects("gone") == 0
    assert [result for _, result in harness.observer.results] == [
        "success",
        "unfenceable",
        "tombstoned",
        "fenced",
    ]


async def test_command_and_its_undo_in_one_batch_never_runs(harness: Harness) -> None:
    # A participant back from an outage finds the command, a re-send of it and the undo the
    # saga sent when it gave up, all queued: it refuses the command instead of running it.
    command = touch_command(key="queued", command_id="cmd-queued")
    undo = undo_command("cmd-queued", key="queued", command_id="cmd-queued-undo")
    await harness.send(command)
    await harness.send(command.model_copy(update={"message_id": "queued-resend", "attempt": 2}))
    await harness.send(undo)
    await harness.start_runner()

    first, second, answer = await harness.replies(3)
    assert first.command_id == second.command_id == "cmd-queued"
    assert first.outcome is second.outcome is Outcome.FAILURE
    assert first.payload == {"fenced": True, "fenced_by": "cmd-queued-undo"}
    assert second.message_id == first.message_id
    assert answer.command_id == "cmd-queued-undo"
    assert (answer.outcome, answer.payload) == (Outcome.SUCCESS, {"fenced": True})
    assert CALLS["cmd-queued"] == CALLS["cmd-queued-undo"] == 0
    assert await harness.effects("queued") == 0
    assert [result for _, result in harness.observer.results] == [
        "fenced",
        "fenced",
        "tombstoned",
    ]


async def test_deferred_command_fenced_cannot_be_answered(harness: Harness) -> None:
    runner = await harness.start_runner()
    command = touch_command("defer", key="wait", command_id="cmd-wait")
    await harness.send(command)

    async def deferred() -> bool:
        row = await harness.record("cmd-wait")
        return row is not None and row.status == "pending"

    await eventually(deferred, what="the command to be deferred")
    await harness.send(undo_command("cmd-wait", key="wait", command_id="cmd-wait-undo"))

    (answer,) = await harness.replies(1)
    assert answer.command_id == "cmd-wait-undo"
    assert (answer.outcome, answer.payload) == (Outcome.SUCCESS, {"fenced": True})
    assert CALLS["cmd-wait-undo"] == 0
    assert (await harness.record("cmd-wait")).status == "fenced"
    with pytest.raises(CommandFencedError, match="cmd-wait"):
        await runner.complete_later("cmd-wait", {"late": True})
    with pytest.raises(CommandFencedError):
        await runner.reject_later("cmd-wait", "changed my mind")

    await harness.send(command)  # a re-delivery gets the refusal recorded when it was fenced
    _, refused = await harness.replies(2)
    assert refused.command_id == "cmd-wait"
    assert refused.outcome is Outcome.FAILURE
    assert refused.payload == {"fenced": True, "fenced_by": "cmd-wait-undo"}
    assert CALLS["cmd-wait"] == 1


async def test_undos_that_break_the_contract_are_dead_lettered(harness: Harness) -> None:
    await harness.start_runner()
    unnamed = undo_command("x", key="f", command_id="fence-unnamed", fence=True).model_copy(
        update={"compensates": None}
    )
    itself = undo_command("selfish", key="s", command_id="selfish")
    await harness.send(unnamed)
    await harness.send(itself)
    await harness.send(touch_command(key="fine"))

    (reply,) = await harness.replies(1)
    assert reply.payload["key"] == "fine"
    letters = sorted(await harness.read(harness.dlq, 2), key=lambda r: r.offset)
    messages = [decode_headers(r.headers)[DeadLetterHeader.EXCEPTION_MESSAGE] for r in letters]
    assert messages == [
        "a saga.fence command without compensates",
        "a command that compensates itself",
    ]
    assert [decode_headers(r.headers)[DeadLetterHeader.REASON] for r in letters] == [
        "schema",
        "schema",
    ]


async def test_a_table_from_before_tombstones_is_widened(harness: Harness) -> None:
    async with harness.engine.begin() as conn:
        await conn.execute(
            text(
                "CREATE TABLE sdkprobe.saga_processed_commands ("
                " command_id text PRIMARY KEY, message_type text NOT NULL,"
                " status text NOT NULL, saga_id text NOT NULL, command jsonb NOT NULL,"
                " reply jsonb, created_at timestamptz NOT NULL DEFAULT now(),"
                " updated_at timestamptz NOT NULL DEFAULT now(),"
                " CONSTRAINT saga_processed_commands_status_check"
                " CHECK (status IN ('done', 'pending')))"
            )
        )
    runner = await harness.start_runner()
    await runner.install_schema()  # again: nothing left to change

    await harness.send(undo_command("cmd-old", key="old", command_id="cmd-old-undo"))
    (answer,) = await harness.replies(1)
    assert answer.payload == {"fenced": True}
    assert (await harness.record("cmd-old")).status == "fenced"
    async with harness.engine.connect() as conn:
        checks = await conn.execute(
            text(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE conrelid = 'sdkprobe.saga_processed_commands'::regclass AND contype = 'c'"
            )
        )
        definition = str(checks.scalar_one())
    assert "'fenced'" in definition


# -- heartbeats ----------------------------------------------------------------------------


def _listed(beat: Heartbeat) -> list[str]:
    return [picked.command_id for picked in beat.in_progress]


async def test_heartbeats_list_the_commands_picked_up_and_not_answered(harness: Harness) -> None:
    runner = await harness.start_runner(heartbeat_interval_s=0.1, handler_attempts=1)
    await harness.send(touch_command(key="hb-quick", command_id="cmd-hb-quick"))
    await harness.replies(1)
    await harness.send(touch_command("boom", key="hb-boom", command_id="cmd-hb-boom"))
    await harness.read(harness.dlq, 1)
    GATES["hb-held"] = gate = asyncio.Event()
    try:
        await harness.send(touch_command("held", key="hb-held", command_id="cmd-hb-held"))
        await harness.heartbeats_until(
            lambda beats: any("cmd-hb-held" in _listed(beat) for beat in beats),
            "a heartbeat listing the held command",
        )
    finally:
        gate.set()
    await harness.replies(2)
    held_at = 0

    def three_after_the_held_one(beats: list[Heartbeat]) -> bool:
        nonlocal held_at
        found = [i for i, beat in enumerate(beats) if "cmd-hb-held" in _listed(beat)]
        held_at = found[0] if found else len(beats)
        return len(beats) >= held_at + 4

    records = await harness.heartbeats_until(three_after_the_held_one, "3 more heartbeats")

    beats = [beat for _, beat in records]
    assert all(record.key == b"sdkprobe" for record, _ in records)
    assert {(beat.service, beat.instance) for beat in beats} == {("sdkprobe", runner.instance)}
    listed = [command_id for beat in beats for command_id in _listed(beat)]
    # Listed once each: the handler still running, and the one dead-lettered without a reply.
    assert listed.count("cmd-hb-held") == 1
    assert listed.count("cmd-hb-boom") == 1
    (held,) = [p for p in beats[held_at].in_progress if p.command_id == "cmd-hb-held"]
    assert (held.saga_id, held.saga_type, held.step, held.attempt) == (
        "saga-1",
        "probe",
        "touch",
        1,
    )
    # Answered before the commands after it were even picked up: never listed from then on.
    boom_at = next(i for i, beat in enumerate(beats) if "cmd-hb-boom" in _listed(beat))
    assert all("cmd-hb-quick" not in _listed(beat) for beat in beats[boom_at:])


async def test_heartbeats_can_be_turned_off(harness: Harness) -> None:
    runner = await harness.start_runner(heartbeat_interval_s=0)
    await harness.send(touch_command(key="quiet"))
    await harness.replies(1)
    await runner.stop()
    ends = await _end_offsets(harness, harness.topics.heartbeats)
    assert sum(ends.values()) == 0


async def _end_offsets(harness: Harness, topic: str) -> dict[Any, int]:
    consumer = AIOKafkaConsumer(topic, **harness.consumer_settings)
    await consumer.start()
    try:
        partitions = await eventually(consumer.assignment, what=f"the partitions of {topic}")
        return dict(await consumer.end_offsets(list(partitions)))
    finally:
        await consumer.stop()


# -- outages -------------------------------------------------------------------------------


class FaultyProducer:
    """A real producer that fails its first sends the way aiokafka's does: the first failure
    in the delivery future, the later ones when queueing (its sender task has died)."""

    def __init__(self, kafka: KafkaConfig, failures: list[Exception]) -> None:
        self.real = AIOKafkaProducer(**kafka.producer_kwargs())
        self.failures = failures
        self.sends = 0
        self.failed = 0
        self.stopped = False

    async def start(self) -> None:
        await self.real.start()

    async def stop(self) -> None:
        self.stopped = True
        await self.real.stop()

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        *,
        headers: Any = None,
    ) -> asyncio.Future[Any]:
        self.sends += 1
        if self.failures:
            error = self.failures.pop(0)
            self.failed += 1
            if self.failed > 1:
                raise error
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            future.set_exception(error)
            return future
        delivery: asyncio.Future[Any] = await self.real.send(
            topic, value=value, key=key, headers=headers
        )
        return delivery


class FaultyProducers:
    """Makes a :class:`FaultyProducer` per call, failing as the next failure list says."""

    def __init__(self, kafka: KafkaConfig, *failures: list[Exception]) -> None:
        self.kafka = kafka
        self.failures = list(failures)
        self.made: list[FaultyProducer] = []

    def __call__(self) -> FaultyProducer:
        failures = self.failures.pop(0) if self.failures else []
        self.made.append(FaultyProducer(self.kafka, failures))
        return self.made[-1]


def _lines(caplog: pytest.LogCaptureFixture, text: str, level: int = logging.WARNING) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.levelno >= level and text in record.getMessage()
    ]


async def test_a_producer_that_lost_its_state_is_replaced_and_the_reply_published_once(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    # After a long outage the broker no longer knows the producer: every send fails.
    factory = FaultyProducers(harness.kafka, [OutOfOrderSequenceNumber() for _ in range(1000)])
    runner = await harness.start_runner(producer_factory=factory, heartbeat_interval_s=0)
    first = touch_command(key="lost-1", command_id="cmd-lost-1")
    await harness.send(first)
    await harness.replies_through("lost-1")
    await harness.send(touch_command(key="lost-2", command_id="cmd-lost-2"))

    replies = await harness.replies_through("lost-2")

    assert [reply.command_id for reply in replies] == ["cmd-lost-1", "cmd-lost-2"]
    broken, _ = factory.made
    assert broken.stopped
    assert broken.sends == 1  # renewed at the first failure, no send loop on it
    assert runner._producers.renewals == 1
    assert CALLS["cmd-lost-1"] == 1
    # Answered once: published again from memory, not re-read and re-answered.
    assert harness.observer.results == [("sdkprobe.touch", "success")] * 2
    assert len(_lines(caplog, "lost its idempotence state")) == 1


async def test_unacknowledged_replies_are_published_again_with_backoff_without_re_reading(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    timeouts: list[Exception] = [KafkaTimeoutError() for _ in range(4)]
    factory = FaultyProducers(harness.kafka, timeouts)
    caplog.set_level(logging.DEBUG, logger="service_sdk.runner")
    runner = await harness.start_runner(producer_factory=factory, heartbeat_interval_s=0)
    await harness.send(touch_command(key="flaky-1", command_id="cmd-flaky-1"))

    (reply,) = await harness.replies_through("flaky-1")

    assert reply.command_id == "cmd-flaky-1"
    (producer,) = factory.made  # a timeout is no reason for a new producer
    assert producer.sends == 5
    assert runner._producers.renewals == 0
    # The command was answered once (no "duplicate" from re-reading it), the failing loop
    # logged once and then at DEBUG only, after waits that grew.
    assert harness.observer.results == [("sdkprobe.touch", "success")]
    assert len(_lines(caplog, "publishing replies failed")) == 1
    waits = [
        float(line.rsplit("retrying in ", 1)[1].split("s")[0])
        for line in _lines(caplog, "publishing replies failed", logging.DEBUG)
    ]
    assert waits == sorted(waits)
    assert len(waits) == 4
    assert waits[-1] > waits[0]


class Forwarder:
    """A local TCP port in front of a real server, in one of three modes:

    * ``forward``: pipes connections to the server;
    * ``refuse``: accepts and closes them at once (a server that is down, but countable);
    * ``starting_up``: answers like PostgreSQL during recovery: SQLSTATE 57P03, "the
      database system is starting up".

    Switching mode aborts the connections it was piping.
    """

    def __init__(self, host: str, port: int, mode: str = "forward") -> None:
        self.target = (host, port)
        self.mode = mode
        self.refused = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._piped: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.switch("refuse")
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def switch(self, mode: str) -> None:
        self.mode = mode
        for writer in list(self._piped):
            writer.transport.abort()
        self._piped.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self.mode == "forward":
                await self._pipe(reader, writer)
                return
            self.refused += 1
            if self.mode == "starting_up":
                await _answer_starting_up(reader, writer)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._piped.update((writer, up_writer))

        async def copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except OSError:
                pass
            finally:
                sink.transport.abort()

        try:
            await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))
        finally:
            self._piped.discard(writer)
            self._piped.discard(up_writer)


async def _answer_starting_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """What PostgreSQL answers a client while it recovers (protocol 3: no TLS, then FATAL)."""
    while True:
        length = int.from_bytes(await reader.readexactly(4), "big")
        code = int.from_bytes((await reader.readexactly(length - 4))[:4], "big")
        if code not in (80877103, 80877104):  # SSLRequest, GSSENCRequest
            break  # the startup message
        writer.write(b"N")
        await writer.drain()
    fields = b"SFATAL\0VFATAL\0C57P03\0Mthe database system is starting up\0\0"
    writer.write(b"E" + (len(fields) + 4).to_bytes(4, "big") + fields)
    await writer.drain()


@pytest.fixture
async def postgres_forwarder(harness: Harness) -> AsyncIterator[tuple[Forwarder, AsyncEngine]]:
    """A forwarder in front of the test database, and an engine that connects through it."""
    url = harness.engine.url
    assert url.host is not None
    assert url.port is not None
    forwarder = Forwarder(url.host, url.port)
    await forwarder.start()
    engine = create_async_engine(url.set(host="127.0.0.1", port=forwarder.port))
    try:
        yield forwarder, engine
    finally:
        for runner in harness.runners:
            await runner.stop()  # before its engine goes
        await engine.dispose()
        await forwarder.stop()


async def test_start_waits_for_a_database_that_is_starting_up(
    harness: Harness,
    postgres_forwarder: tuple[Forwarder, AsyncEngine],
    caplog: pytest.LogCaptureFixture,
) -> None:
    forwarder, engine = postgres_forwarder
    forwarder.switch("starting_up")
    runner = await harness.start_runner(engine=engine)
    assert not runner.ready
    assert not runner.healthy
    await harness.send(touch_command(key="db-late", command_id="cmd-db-late"))
    await eventually(lambda: forwarder.refused >= 3, what="3 attempts to connect")
    assert not runner.ready
    assert runner._task is not None
    assert not runner._task.done()

    forwarder.switch("forward")
    (reply,) = await harness.replies_through("db-late")

    assert reply.outcome is Outcome.SUCCESS
    assert runner.ready
    assert runner.healthy
    assert len(_lines(caplog, "starting (database and Kafka) failed")) == 1


async def test_a_command_waits_for_its_database_and_heartbeats_pause_meanwhile(
    harness: Harness, postgres_forwarder: tuple[Forwarder, AsyncEngine]
) -> None:
    forwarder, engine = postgres_forwarder
    runner = await harness.start_runner(engine=engine, heartbeat_interval_s=0.05)
    await harness.send(touch_command(key="db-before", command_id="cmd-db-before"))
    await harness.replies_through("db-before")  # the pool holds a connection now
    heartbeats = runner._heartbeats
    assert heartbeats is not None
    await eventually(lambda: heartbeats.sent >= 2, what="heartbeats")
    assert runner.healthy

    forwarder.switch("starting_up")  # the database restarts: its connections are gone
    await harness.send(touch_command(key="db-during", command_id="cmd-db-during"))
    await eventually(lambda: forwarder.refused >= 2, what="attempts to reconnect")
    await eventually(lambda: heartbeats.withheld >= 2, what="heartbeats withheld")
    sent, withheld = heartbeats.sent, heartbeats.withheld
    await eventually(lambda: heartbeats.withheld >= withheld + 4, what="more withheld")
    assert heartbeats.sent == sent
    assert not runner.healthy
    assert runner.ready

    forwarder.switch("forward")
    replies = await harness.replies_through("db-during")

    assert replies[-1].outcome is Outcome.SUCCESS
    assert CALLS["cmd-db-during"] == 1
    # Waiting for the database was no handler failure, and nothing was dead-lettered.
    assert harness.observer.failures == []
    assert harness.observer.dead == []
    await eventually(lambda: heartbeats.sent > sent, what="heartbeats again")
    await eventually(lambda: runner.healthy, what="healthy again")


async def test_start_waits_for_a_broker_that_is_down_and_logs_it_once(
    harness: Harness, kafka: KafkaService, caplog: pytest.LogCaptureFixture
) -> None:
    host, port = kafka.bootstrap_servers.split(",")[0].rsplit(":", 1)
    forwarder = Forwarder(host, int(port), mode="refuse")
    await forwarder.start()
    try:
        kafka_config = dataclasses.replace(
            harness.kafka, bootstrap_servers=f"127.0.0.1:{forwarder.port}"
        )
        runner = await harness.start_runner(kafka=kafka_config)
        assert not runner.ready
        await harness.send(touch_command(key="kafka-late", command_id="cmd-kafka-late"))
        await eventually(lambda: forwarder.refused >= 4, what="4 attempts to bootstrap")
        assert not runner.ready
        assert runner._task is not None
        assert not runner._task.done()

        forwarder.switch("forward")
        (reply,) = await harness.replies_through("kafka-late")
        assert reply.outcome is Outcome.SUCCESS
        assert runner.ready
    finally:
        for runner in harness.runners:
            await runner.stop()
        await forwarder.stop()

    # Our line once; aiokafka's own per-attempt lines at most once each (the throttle).
    assert len(_lines(caplog, "starting (database and Kafka) failed")) == 1
    kafka_lines = Counter(
        record.msg
        for record in caplog.records
        if record.name.startswith("aiokafka") and record.levelno >= logging.WARNING
    )
    assert all(count == 1 for count in kafka_lines.values()), kafka_lines


async def test_stop_ends_a_runner_that_never_reached_kafka(harness: Harness) -> None:
    forwarder = Forwarder("127.0.0.1", 9, mode="refuse")
    await forwarder.start()
    try:
        kafka_config = dataclasses.replace(
            harness.kafka, bootstrap_servers=f"127.0.0.1:{forwarder.port}"
        )
        runner = await harness.start_runner(kafka=kafka_config)
        await eventually(lambda: forwarder.refused >= 2, what="attempts to bootstrap")
        await runner.stop()
        assert runner._task is not None
        assert runner._task.done()
        assert not runner.ready
        with pytest.raises(RuntimeError, match="cannot be started again"):
            await runner.start()
    finally:
        await forwarder.stop()


async def test_heartbeats_pause_while_the_loop_is_stuck_in_a_handler(harness: Harness) -> None:
    runner = await harness.start_runner(heartbeat_interval_s=0.05, progress_timeout_s=0.5)
    heartbeats = runner._heartbeats
    assert heartbeats is not None
    GATES["stuck"] = gate = asyncio.Event()
    try:
        await harness.send(touch_command("held", key="stuck", command_id="cmd-stuck"))
        await eventually(lambda: heartbeats.withheld >= 2, what="heartbeats withheld")
        sent, withheld = heartbeats.sent, heartbeats.withheld
        await eventually(lambda: heartbeats.withheld >= withheld + 4, what="more withheld")
        assert heartbeats.sent == sent
        assert not runner.healthy
    finally:
        gate.set()
    await harness.replies_through("stuck")
    await eventually(lambda: heartbeats.sent > sent, what="heartbeats again")
    assert runner.healthy
