"""The participant runtime against real Kafka and PostgreSQL: replies, de-duplication by
command id, rollback on rejection, dead letters, deferred replies, committed offsets."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service_sdk import (
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
from service_sdk.testing import command_envelope
from tests.support.waiting import eventually

if TYPE_CHECKING:
    from coordinator.devstack import KafkaService, TopicFactory

Mode = Literal["ok", "reject", "retry", "boom", "defer", "held"]

SERVICE = Service("sdkprobe", schema="sdkprobe")
CALLS: Counter[str] = Counter()
"""Handler runs per command id (ids are unique per test)."""
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
    return Touched(key=cmd.key, run=CALLS[ctx.command_id])


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
        options = {"handler_attempts": 2, "handler_backoff_s": 0.05, **options}
        runner = ServiceRunner(
            SERVICE,
            kafka=self.kafka,
            engine=self.engine,
            topics=self.topics,
            observer=self.observer,
            **options,
        )
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
    await fresh_topics("sdkprobe.commands", "saga.replies", "sdkprobe.commands.dlq", partitions=2)
    async with db_engine.begin() as conn:
        await conn.execute(text("CREATE SCHEMA IF NOT EXISTS sdkprobe"))
        await conn.execute(
            text("CREATE TABLE sdkprobe.effects (id serial PRIMARY KEY, key text, command_id text)")
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
