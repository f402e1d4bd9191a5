"""Dead letters end to end: every kind of bad input reaches a dead-letter topic with full
headers and the consumers go on; the ``saga dlq`` tooling lists and replays them once."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from rich.console import Console
from sqlalchemy import text

from coordinator.config import Settings
from coordinator.core.errors import DeadLetterNotFoundError
from coordinator.demo.participants import payment
from coordinator.demo.runner import DemoCluster, DemoOptions, Infrastructure
from coordinator.ops.client import start_request
from coordinator.ops.dead_letter_admin import (
    DeadLetterAdmin,
    DeadLetterFilter,
    StoredDeadLetter,
    replay_headers,
)
from coordinator.runtime.kafka import producer_kwargs
from coordinator.store.database import create_engine
from coordinator.store.migrate import upgrade_database
from saga_defs import OrderData
from saga_defs.order import ChargePayment, OrderItem
from service_sdk import (
    DeadLetterHeader,
    Envelope,
    Header,
    KafkaConfig,
    MessageKind,
    Outcome,
    ServiceRunner,
    Topics,
    decode_envelope,
    decode_headers,
    encode_headers,
)
from service_sdk.testing import command_envelope
from tests.garbage import Garbage, draw, garbage
from tests.support.waiting import eventually

if TYPE_CHECKING:
    from coordinator.devstack import KafkaService

ORDER = OrderData(
    order_id="o-1",
    customer_id="c-1",
    items=(OrderItem(sku="sku-1", quantity=1),),
    amount_cents=1_000,
)
# Bigger than any dead-letter header set can be added to without passing the producer's
# 1 MiB request limit, yet small enough for the original producer to send it.
OVERSIZED = 1_047_000
NON_UTF8 = b"\xff\xfe\x00\xc3("


@dataclass(frozen=True)
class Sent:
    """One bad record we produced, and the reason its dead letter must carry."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    reason: str

    @property
    def kept_value(self) -> bytes | None:
        """The body its dead letter carries: the original, or b"" for a record with neither
        key nor value (which aiokafka cannot send)."""
        return b"" if self.key is None and self.value is None else self.value


async def _send(
    producer: AIOKafkaProducer,
    topic: str,
    value: bytes | None,
    reason: str,
    *,
    key: bytes | None = b"k",
    headers: list[tuple[str, bytes | None]] | None = None,
) -> Sent:
    meta = await producer.send_and_wait(topic, value, key=key, headers=headers or [])
    return Sent(
        topic, meta.partition, meta.offset, meta.timestamp, key, value, headers or [], reason
    )


async def _send_without_key_or_value(producer: AIOKafkaProducer, topic: str) -> Sent:
    # Kafka and Java producers allow a record with neither key nor value; aiokafka's send()
    # refuses to make one, so it goes through the producer's accumulator.
    await producer.client._wait_on_metadata(topic)
    future = await producer._message_accumulator.add_message(
        TopicPartition(topic, 0), None, None, 30.0, headers=[]
    )
    meta = await future
    return Sent(topic, meta.partition, meta.offset, meta.timestamp, None, None, [], "malformed")


async def _send_envelope(
    producer: AIOKafkaProducer, topic: str, envelope: Envelope, reason: str
) -> Sent:
    return await _send(
        producer,
        topic,
        envelope.to_bytes(),
        reason,
        key=envelope.key(),
        headers=encode_headers(envelope.headers()),
    )


async def _read_all(bootstrap: str, topic: str, count: int, timeout_s: float = 60.0) -> list[Any]:
    """At least ``count`` records of ``topic`` (every partition, from the start)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        found: list[Any] = []

        async def enough() -> bool:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                found.extend(records)
            assert len(found) >= count, f"{len(found)} of {count} record(s)"
            return True

        await eventually(enough, timeout=timeout_s, interval=0, what=f"records on {topic}")
        return found
    finally:
        await consumer.stop()


def _check_letter(letter: Any, sent: Sent, group: str) -> None:
    headers = dict(letter.headers)
    text_of = {
        name: value.decode()
        for name, value in headers.items()
        if name.startswith(("kafka_dlt-", "saga_dlt-"))
    }
    assert text_of[DeadLetterHeader.REASON] == sent.reason, text_of
    assert text_of[DeadLetterHeader.ORIGINAL_TOPIC] == sent.topic
    assert text_of[DeadLetterHeader.ORIGINAL_PARTITION] == str(sent.partition)
    assert text_of[DeadLetterHeader.ORIGINAL_OFFSET] == str(sent.offset)
    assert text_of[DeadLetterHeader.ORIGINAL_TIMESTAMP] == str(sent.timestamp)
    assert text_of[DeadLetterHeader.ORIGINAL_CONSUMER_GROUP] == group
    assert text_of[DeadLetterHeader.EXCEPTION_FQCN]
    assert text_of[DeadLetterHeader.EXCEPTION_MESSAGE]
    assert text_of[DeadLetterHeader.DEAD_LETTER_ID]
    assert letter.key == sent.key
    assert letter.value == sent.kept_value
    # The original headers, byte for byte, in front of the dead-letter ones.
    assert list(letter.headers)[: len(sent.headers)] == sent.headers


def _reply(saga_id: str, **changes: Any) -> Envelope:
    fields: dict[str, Any] = {
        "kind": MessageKind.REPLY,
        "message_type": "inventory.reserve_stock",
        "saga_id": saga_id,
        "saga_type": "order",
        "step": "reserve_inventory",
        "command_id": "cmd-x",
        "outcome": Outcome.SUCCESS,
        "payload": {"reservation_id": "r"},
    }
    fields.update(changes)
    return Envelope(**fields)


async def test_coordinator_dead_letters_every_kind_of_bad_input(
    coordinator_settings: Settings, running_coordinator: Any, producer: AIOKafkaProducer
) -> None:
    topics = Topics(coordinator_settings.kafka.topic_prefix)
    replies, requests = topics.replies, topics.requests
    group = coordinator_settings.kafka.group_id
    async with running_coordinator(coordinator_settings) as coordinator:
        sent = [
            await _send(producer, replies, b"{not json", "malformed"),
            await _send(producer, replies, None, "malformed", key=b"key-without-value"),
            await _send(producer, replies, b"", "malformed"),
            await _send(producer, replies, b"[1, 2]", "malformed"),
            await _send(
                producer,
                replies,
                b"\xc3(",
                "malformed",
                headers=[("ce_id", NON_UTF8), ("x-bin", b"\x80\x81"), ("x-null", None)],
            ),
            await _send_without_key_or_value(producer, replies),
            await _send(producer, replies, b"x" * OVERSIZED, "malformed"),
            await _send_envelope(
                producer, replies, _reply("g-1", kind=MessageKind.COMMAND), "unexpected_kind"
            ),
            await _send_envelope(
                producer, replies, _reply("g-2", saga_type="nope"), "unknown_saga_type"
            ),
            await _send_envelope(producer, replies, _reply("g-3", outcome=None), "schema"),
            await _send_envelope(producer, replies, _reply("g-4"), "unknown_saga"),
            await _send_envelope(producer, replies, _reply("g\x005"), "processing_error"),
            await _send_envelope(
                producer,
                requests,
                start_request("order", {"order_id": "o"}, saga_id="s-1"),
                "invalid_data",
            ),
            await _send_envelope(
                producer, requests, start_request("nope", ORDER, saga_id="s-2"), "unknown_saga_type"
            ),
            await _send_envelope(
                producer,
                requests,
                start_request(
                    "order", ORDER.model_copy(update={"customer_id": "c\x00"}), saga_id="s-3"
                ),
                "processing_error",
            ),
        ]
        bootstrap = coordinator_settings.kafka.bootstrap_servers
        by_origin = {(s.topic, s.partition, s.offset): s for s in sent}
        for topic in (replies, requests):
            expected = sum(1 for s in sent if s.topic == topic)
            letters = await _read_all(bootstrap, Topics.dead_letters(topic), expected)
            assert len(letters) == expected
            for letter in letters:
                headers = decode_headers(letter.headers)
                origin = (
                    headers[DeadLetterHeader.ORIGINAL_TOPIC],
                    int(headers[DeadLetterHeader.ORIGINAL_PARTITION]),
                    int(headers[DeadLetterHeader.ORIGINAL_OFFSET]),
                )
                _check_letter(letter, by_origin.pop(origin), group)
        assert by_origin == {}
        # The consumer is still alive.
        await coordinator.client.start("order", ORDER, saga_id="after-bad")
        commands = await _read_all(bootstrap, topics.commands("inventory"), 1)
        assert decode_envelope(commands[0].value).saga_id == "after-bad"

        # Replayed, the malformed ones fail again and come back as they were, counted.
        malformed = DeadLetterFilter(topic="saga.replies", reason="malformed")
        async with DeadLetterAdmin(
            bootstrap,
            coordinator.store,
            topics,
            producer_kwargs=producer_kwargs(coordinator_settings.kafka),
        ) as admin:
            before = await admin.list(malformed)
            report = await admin.replay(malformed)
            assert (report.replayed, report.failed, report.unreplayable) == (before, [], [])
            returned = (await _wait_for(admin, malformed, 2 * len(before)))[len(before) :]
        sources = {(letter.key, letter.value): letter for letter in before}
        assert len(sources) == len(before) == len(returned)
        for letter in returned:
            source = sources.pop((letter.key, letter.value))
            assert letter.replay_count == 1
            assert letter.consumer_group == group
            expected = replay_headers(source)
            assert list(letter.headers[: len(expected)]) == expected


def _charge(customer: str, *, order: str = "o-1", **options: Any) -> Envelope:
    return command_envelope(
        ChargePayment(order_id=order, customer_id=customer, amount_cents=100, currency="EUR"),
        saga_id=order,
        saga_type="order",
        step="charge_payment",
        **options,
    )


@pytest.fixture
async def payment_runner(
    kafka: KafkaService,
    fresh_topics: Any,
    topic_prefix: str,
    database_url: str,
    kafka_consumer_settings: dict[str, Any],
) -> AsyncIterator[ServiceRunner]:
    await fresh_topics("payment.commands", "payment.commands.dlq", "saga.replies", partitions=1)
    engine = create_engine(database_url, pool_size=2)
    async with engine.begin() as conn:
        await payment.install(conn)
        await payment.seed(conn, {"ok": "ok", "down": "ok"})
        await payment.start_outage(conn, ["down"])
    runner = ServiceRunner(
        payment.service,
        kafka=KafkaConfig(
            kafka.bootstrap_servers,
            idempotent=kafka.supports_idempotence,
            session_timeout_ms=kafka_consumer_settings.get("session_timeout_ms"),
            heartbeat_interval_ms=kafka_consumer_settings.get("heartbeat_interval_ms"),
        ),
        engine=engine,
        topics=Topics(topic_prefix),
        group_id=f"{topic_prefix}payment-service",
        handler_attempts=2,
        handler_backoff_s=0.05,
    )
    try:
        async with runner:
            yield runner
    finally:
        await engine.dispose()


async def test_participant_dead_letters_every_kind_of_bad_input(
    payment_runner: ServiceRunner, producer: AIOKafkaProducer, kafka: KafkaService
) -> None:
    commands = payment_runner.topic
    valid = _charge("ok")
    sent = [
        await _send(producer, commands, b"{not json", "malformed"),
        await _send(producer, commands, None, "malformed", key=b"key-without-value"),
        await _send(producer, commands, b"\xc3(", "malformed", headers=[("ce_type", NON_UTF8)]),
        await _send(producer, commands, b"x" * OVERSIZED, "malformed"),
        await _send_envelope(
            producer, commands, valid.model_copy(update={"kind": MessageKind.REPLY}), "schema"
        ),
        await _send_envelope(
            producer, commands, valid.model_copy(update={"command_id": None}), "schema"
        ),
        await _send_envelope(
            producer,
            commands,
            valid.model_copy(update={"message_type": "payment.steal"}),
            "unknown_type",
        ),
        await _send_envelope(
            producer,
            commands,
            valid.model_copy(update={"payload": {**valid.payload, "amount_cents": "x"}}),
            "schema",
        ),
        await _send_envelope(producer, commands, _charge("down", order="o-2"), "handler_error"),
        await _send_envelope(
            producer, commands, _charge("ok", order="o-3", reply_to="no such topic!"), "schema"
        ),
    ]
    await _send_envelope(producer, commands, valid, "")
    replies = await _read_all(kafka.bootstrap_servers, payment_runner.topics.replies, 1)
    assert [decode_envelope(r.value).saga_id for r in replies] == ["o-1"]
    letters = await _read_all(kafka.bootstrap_servers, Topics.dead_letters(commands), len(sent))
    assert len(letters) == len(sent)
    for letter, original in zip(sorted(letters, key=lambda r: r.offset), sent, strict=True):
        _check_letter(letter, original, payment_runner.group_id)


# -- replay --------------------------------------------------------------------------------


def _cli(*args: str, idempotent: bool = True) -> Any:
    """``saga <args>`` in a thread (the command runs its own event loop), configured for the
    broker as an operator would be (the embedded broker has no idempotent producer)."""
    from typer.testing import CliRunner

    from coordinator.cli.main import app

    # A wide terminal, so that no table column is cut short.
    env = {"COLUMNS": "200", "SAGA_KAFKA__IDEMPOTENT": "true" if idempotent else "false"}
    return asyncio.to_thread(CliRunner().invoke, app, list(args), env=env)


async def _wait_for(
    admin: DeadLetterAdmin, filters: DeadLetterFilter, count: int, timeout_s: float = 60.0
) -> list[StoredDeadLetter]:
    async def listed() -> list[StoredDeadLetter]:
        letters = await admin.list(filters)
        assert len(letters) >= count, f"{len(letters)} of {count} dead letter(s)"
        return letters

    return await eventually(listed, timeout=timeout_s, interval=0.3, what=f"dead letters {filters}")


async def test_replay_sends_each_dead_letter_back_once_and_failures_come_back_counted(
    payment_runner: ServiceRunner,
    producer: AIOKafkaProducer,
    kafka: KafkaService,
    database_url: str,
    topic_prefix: str,
    kafka_producer_settings: dict[str, Any],
) -> None:
    await upgrade_database(database_url)
    topics = payment_runner.topics
    commands = payment_runner.topic
    broken = _charge("down", order="o-2")
    await _send_envelope(producer, commands, broken, "handler_error")
    engine = create_engine(database_url, pool_size=2)
    admin = DeadLetterAdmin(
        kafka.bootstrap_servers, engine, topics, producer_kwargs=kafka_producer_settings
    )
    handler_errors = DeadLetterFilter(topic="payment.commands", reason="handler_error")
    try:
        async with admin:
            (first,) = await _wait_for(admin, handler_errors, 1)
            assert first.saga_id == "o-2"
            assert first.replay_count == 0
            assert await admin.show(*first.position) == first
            with pytest.raises(DeadLetterNotFoundError):
                await admin.show(first.dlq_topic, 0, 999)
            assert (
                await admin.list(DeadLetterFilter(since=datetime.now(UTC) + timedelta(hours=1)))
                == []
            )
            assert await admin.list(DeadLetterFilter(saga_id="o-2")) == [first]
            assert await admin.dlq_topics() == [Topics.dead_letters(commands)]

            dry = await admin.replay(handler_errors, dry_run=True)
            assert (dry.replayed, dry.skipped) == ([first], [])

            # A send that fails is not recorded: the dead letter stays replayable.
            tiny = DeadLetterAdmin(
                kafka.bootstrap_servers,
                engine,
                topics,
                producer_kwargs={**kafka_producer_settings, "max_request_size": 100},
            )
            async with tiny:
                failed = await tiny.replay(handler_errors)
            assert [letter for letter, _ in failed.failed] == [first]
            assert failed.replayed == []

            # The outage goes on: the replayed command fails again and comes back counted.
            once = await admin.replay(handler_errors, actor="test")
            assert (once.replayed, once.skipped, once.failed) == ([first], [], [])
            first_again, second = await _wait_for(admin, handler_errors, 2)
            assert first_again == first
            assert second.replay_count == 1
            assert (second.key, second.value) == (first.key, first.value)
            assert second.original_offset is not None
            assert first.original_offset is not None
            assert second.original_offset > first.original_offset
            assert second.header(Header.ID) == broken.message_id

            twice = await admin.replay(handler_errors, actor="test")
            assert (twice.replayed, twice.skipped) == ([second], [first])
            third = (await _wait_for(admin, handler_errors, 3))[2]
            assert third.replay_count == 2

            # The outage ends: the last copy goes through, the saga gets its answer.
            async with engine.begin() as conn:
                await payment.end_outage(conn)
            result = await _cli(
                "dlq",
                "replay",
                "--topic",
                "payment.commands",
                "--reason",
                "handler_error",
                "--json",
                "--actor",
                "operator-1",
                "--bootstrap-servers",
                kafka.bootstrap_servers,
                "--database-url",
                database_url,
                "--topic-prefix",
                topic_prefix,
                idempotent=kafka.supports_idempotence,
            )
            assert result.exit_code == 0, result.output
            report = json.loads(result.stdout)
            assert [r["offset"] for r in report["replayed"]] == [third.offset]
            assert [r["offset"] for r in report["skipped"]] == [first.offset, second.offset]
            replies = await _read_all(kafka.bootstrap_servers, topics.replies, 1)
            (reply,) = [decode_envelope(r.value) for r in replies]
            assert (reply.saga_id, reply.outcome) == ("o-2", Outcome.SUCCESS)

            # Nothing is left to replay, and nothing more is sent.
            end = await admin.replay(handler_errors)
            assert (len(end.replayed), len(end.skipped)) == (0, 3)
            assert len(await admin.list(handler_errors)) == 3
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    text(
                        "SELECT dlq_offset, actor, original_topic FROM saga.dead_letter_replay "
                        "ORDER BY dlq_offset"
                    )
                )
            ).all()
        assert [tuple(r) for r in rows] == [
            (first.offset, "test", commands),
            (second.offset, "test", commands),
            (third.offset, "operator-1", commands),
        ]
        # The human-readable forms render.
        common = ["--bootstrap-servers", kafka.bootstrap_servers, "--topic-prefix", topic_prefix]
        listing = await _cli(
            "dlq",
            "list",
            "--reason",
            "handler_error",
            *common,
            idempotent=kafka.supports_idempotence,
        )
        assert listing.exit_code == 0, listing.output
        assert "handler_error" in listing.stdout
        shown = await _cli(
            "dlq",
            "show",
            first.dlq_topic,
            "0",
            str(first.offset),
            *common,
            idempotent=kafka.supports_idempotence,
        )
        assert shown.exit_code == 0, shown.output
        assert "payment.charge_payment" in shown.stdout
        assert DeadLetterHeader.EXCEPTION_MESSAGE in shown.stdout
        missing = await _cli(
            "dlq",
            "show",
            first.dlq_topic,
            "0",
            "999",
            *common,
            idempotent=kafka.supports_idempotence,
        )
        assert missing.exit_code == 1
        unfiltered = await _cli("dlq", "replay", *common, idempotent=kafka.supports_idempotence)
        assert unfiltered.exit_code == 2
    finally:
        await engine.dispose()


# -- the big one: garbage during a real run ------------------------------------------------

ORDERS = 500
GARBAGE_PER_TOPIC = 500
SEED = 20250601


def _garbage() -> tuple[list[Garbage], list[Garbage]]:
    return (
        draw(garbage("replies"), GARBAGE_PER_TOPIC, SEED),
        draw(garbage("commands"), GARBAGE_PER_TOPIC, SEED + 1),
    )


async def _send_garbage(
    producer: AIOKafkaProducer, topics: Topics, items: list[Garbage]
) -> dict[tuple[str, int, int], Garbage]:
    """Send every item; returns them by where they landed."""
    pending = []
    for item in items:
        topic = topics.replies if item.target == "replies" else topics.commands("payment")
        future = await producer.send(topic, item.value, key=item.key, headers=list(item.headers))
        pending.append((topic, item, future))
    landed = {}
    for topic, item, future in pending:
        meta = await future
        landed[(topic, meta.partition, meta.offset)] = item
    return landed


async def _wait_for_sagas(
    admin: DeadLetterAdmin, filters: DeadLetterFilter, saga_ids: set[str], timeout_s: float = 60.0
) -> None:
    async def listed() -> bool:
        missing = saga_ids - {letter.saga_id for letter in await admin.list(filters)}
        assert not missing, f"no dead letter yet of {sorted(missing)}"
        return True

    await eventually(listed, timeout=timeout_s, interval=0.5, what=f"dead letters {filters}")


def _interleave(first: list[Garbage], second: list[Garbage]) -> list[Garbage]:
    return [item for pair in zip(first, second, strict=True) for item in pair]


@pytest.mark.timeout(180)
async def test_garbage_during_500_sagas_is_dead_lettered_and_repaired_by_one_replay(
    kafka: KafkaService,
    topic_prefix: str,
    database_url: str,
    producer: AIOKafkaProducer,
) -> None:
    infra = Infrastructure(
        kafka.bootstrap_servers, kafka.supports_idempotence, database_url, kafka.kind
    )
    options = DemoOptions(orders=ORDERS, fail_rate=0.1, timeout_s=120, topic_prefix=topic_prefix)
    cluster = DemoCluster(options, infra, Console(quiet=True))
    topics = Topics(topic_prefix)
    plan = cluster.plan
    declined = plan.declined_customers
    # The card processor is down for two customers: their charges fail unexpectedly and are
    # dead-lettered (handler_error) while their sagas wait on the payment step's deadline.
    down = sorted({o.customer_id for o in plan.orders if o.customer_id not in declined})[:2]
    stalled = {o.order_id for o in plan.orders if o.customer_id in down}
    assert 10 <= len(stalled) <= 30
    admin = DeadLetterAdmin(
        kafka.bootstrap_servers,
        cluster.engine,
        topics,
        producer_kwargs=producer_kwargs(cluster.settings.kafka),
    )
    cli_options = [
        "--bootstrap-servers", kafka.bootstrap_servers,
        "--database-url", database_url,
        "--topic-prefix", topic_prefix,
    ]  # fmt: skip
    handler_errors = DeadLetterFilter(topic="payment.commands", reason="handler_error")
    # Drawn here, before anything runs: Hypothesis objects to a global `random` that other
    # code (aiokafka) moves while it draws.
    for_replies, for_commands = _garbage()
    try:
        await cluster.prepare()
        async with cluster.engine.begin() as conn:
            await payment.start_outage(conn, down)
        await cluster.start()
        await cluster.wait_ready()
        oversized = [
            Garbage(target, "oversized", b"big", b"\x00" * OVERSIZED, (), "malformed")
            for target in ("replies", "commands")
        ]
        _, landed = await asyncio.gather(
            cluster.submit(),
            _send_garbage(producer, topics, [*_interleave(for_replies, for_commands), *oversized]),
        )
        # Everything but the stalled sagas ends; the stalled ones are in the dead letters.
        statuses = await cluster.wait(until=ORDERS - len(stalled), progress=False)
        assert all(c.returncode is None for c in cluster.children), "a process stopped"
        assert {s for s, (status, _) in statuses.items() if status == "RUNNING"} == stalled

        await _wait_for_sagas(admin, handler_errors, stalled)
        async with cluster.engine.begin() as conn:
            await payment.end_outage(conn)
        first = await _cli(
            "dlq", "replay", "--topic", "payment.commands", "--reason", "handler_error",
            "--json", "--actor", "test", *cli_options,
            idempotent=kafka.supports_idempotence,
        )  # fmt: skip
        assert first.exit_code == 0, first.output
        replayed = json.loads(first.stdout)
        assert replayed["skipped"] == replayed["failed"] == replayed["unreplayable"] == []
        assert {r["saga_id"] for r in replayed["replayed"]} == stalled

        summary = await cluster.summarize(await cluster.wait(progress=False))
        assert all(c.returncode is None for c in cluster.children), "a process stopped"

        second = await _cli(
            "dlq", "replay", "--topic", "payment.commands", "--reason", "handler_error",
            "--json", *cli_options,
            idempotent=kafka.supports_idempotence,
        )  # fmt: skip
        assert second.exit_code == 0, second.output
        again = json.loads(second.stdout)
        first_positions = [
            (r["dlq_topic"], r["partition"], r["offset"]) for r in replayed["replayed"]
        ]
        assert [(r["dlq_topic"], r["partition"], r["offset"]) for r in again["skipped"]] == (
            first_positions
        )
        # Only a copy re-sent on a missed deadline during the outage can be new here; a third
        # replay then sends nothing at all.
        assert {r["saga_id"] for r in again["replayed"]} <= stalled
        third = await admin.replay(handler_errors)
        assert third.replayed == []

        letters = await admin.list()
        other = await admin.dlq_topics()
    finally:
        await admin.stop()
        await cluster.close()

    assert summary.ledger_problems == []
    assert (summary.completed, summary.compensated, summary.failed, summary.stuck) == (
        ORDERS - round(ORDERS * 0.1),
        round(ORDERS * 0.1),
        0,
        0,
    )
    assert summary.ledger_ok

    # Every bad record is in its topic's dead letters, with the reason its consumer gives; the
    # only other dead letters are the stalled sagas' charges.
    found = {(d.original_topic, d.original_partition, d.original_offset): d for d in letters}
    assert len(found) == len(letters)
    missing = [key for key in landed if key not in found]
    assert missing == []
    for key, item in landed.items():
        letter = found.pop(key)
        assert (letter.reason, letter.key, letter.value) == (item.reason, item.key, item.value)
        assert letter.dlq_topic == f"{key[0]}.dlq"
        assert letter.exception
        assert letter.exception_message
        assert letter.consumer_group
    assert {d.reason for d in found.values()} == {"handler_error"}
    assert {d.saga_id for d in found.values()} == stalled
    by_topic = Counter(d.dlq_topic for d in letters)
    assert by_topic[Topics.dead_letters(topics.replies)] == GARBAGE_PER_TOPIC + 1
    assert by_topic[Topics.dead_letters(topics.commands("payment"))] == (
        GARBAGE_PER_TOPIC + 1 + len(found)
    )
    assert set(by_topic) <= set(other)
