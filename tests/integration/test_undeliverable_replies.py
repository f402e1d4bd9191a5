"""A participant's reply larger than Kafka takes (real Kafka + PostgreSQL): over its producer's
``max_request_size`` (found before the commit), or over the topic's ``max.message.bytes`` (the
broker refuses it after the commit).

The reply is dead-lettered, the command is answered by a small stand-in, and the coordinator
undoes that step with the one before it; the participant goes on answering later commands,
and a redelivered command gets the stand-in again.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any, ClassVar

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coordinator.app import Coordinator
from coordinator.config import Settings
from coordinator.core.definition import Compensation, SagaDefinition, SagaRegistry, Step
from coordinator.core.state import HistoryKind, SagaInstance, SagaStatus
from service_sdk import (
    Command,
    Envelope,
    HandlerContext,
    KafkaConfig,
    Service,
    ServiceRunner,
    Topics,
    decode_envelope,
    encode_headers,
)
from service_sdk.contract import (
    UNDELIVERABLE_KEY,
    DeadLetterHeader,
    Outcome,
    decode_headers,
    undeliverable_reason,
)
from service_sdk.testing import command_envelope
from tests.support.waiting import eventually

OVER_THE_PRODUCER_LIMIT = 1_200_000
"""Characters: more than the producer's default max_request_size (1 MiB)."""
BROKER_LIMIT = 100_000
"""The replies topic's max.message.bytes in the broker case, far below the producer's."""
PATIENT = timedelta(seconds=120)


class Reserve(Command):
    message_type: ClassVar[str] = "archive.reserve"
    label: str


class Release(Command):
    message_type: ClassVar[str] = "archive.release"
    label: str


class Fetch(Command):
    message_type: ClassVar[str] = "archive.fetch"
    label: str
    size: int


class Discard(Command):
    message_type: ClassVar[str] = "archive.discard"
    label: str


class ArchiveData(BaseModel):
    label: str
    size: int
    reservation: str | None = None
    blob: str | None = None


def _reserved(data: ArchiveData, reply: Mapping[str, Any]) -> ArchiveData:
    return data.model_copy(update={"reservation": reply["reservation"]})


def _fetched(data: ArchiveData, reply: Mapping[str, Any]) -> ArchiveData:
    # Takes any payload: only the marker tells the coordinator that this one is unusable.
    return data.model_copy(update={"blob": str(reply.get("blob", ""))[:10]})


class ArchiveSaga(SagaDefinition[ArchiveData]):
    """Reserve, then fetch; each undone by its compensation. Deadlines no test reaches."""

    name = "archive"
    data_model = ArchiveData
    steps = (
        Step[ArchiveData](
            name="reserve",
            service="archive",
            command=Reserve,
            build=lambda d: Reserve(label=d.label),
            on_success=_reserved,
            compensation=Compensation[ArchiveData](
                Release, lambda d: Release(label=d.label), timeout=PATIENT
            ),
            timeout=PATIENT,
        ),
        Step[ArchiveData](
            name="fetch",
            service="archive",
            command=Fetch,
            build=lambda d: Fetch(label=d.label, size=d.size),
            on_success=_fetched,
            compensation=Compensation[ArchiveData](
                Discard, lambda d: Discard(label=d.label), timeout=PATIENT
            ),
            timeout=PATIENT,
        ),
    )


archive = Service("archive", schema="archive_svc")


async def _effect(ctx: HandlerContext, label: str, action: str) -> None:
    await ctx.connection.execute(
        text("INSERT INTO archive_svc.effects (label, action) VALUES (:label, :action)"),
        {"label": label, "action": action},
    )


@archive.handles(Reserve)
async def reserve(command: Reserve, ctx: HandlerContext) -> dict[str, Any]:
    await _effect(ctx, command.label, "reserve")
    return {"reservation": f"r-{command.label}"}


@archive.handles(Release)
async def release(command: Release, ctx: HandlerContext) -> None:
    await _effect(ctx, command.label, "release")


@archive.handles(Fetch)
async def fetch(command: Fetch, ctx: HandlerContext) -> dict[str, Any]:
    await _effect(ctx, command.label, "fetch")
    return {"blob": "x" * command.size}


@archive.handles(Discard)
async def discard(command: Discard, ctx: HandlerContext) -> None:
    await _effect(ctx, command.label, "discard")


async def _install(conn: AsyncConnection) -> None:
    await conn.execute(
        text(
            "CREATE TABLE IF NOT EXISTS archive_svc.effects ("
            "id bigserial PRIMARY KEY, label text NOT NULL, action text NOT NULL)"
        )
    )


async def _finished(coordinator: Coordinator, saga_id: str) -> SagaInstance:
    async def terminal() -> SagaInstance:
        async with coordinator.store.engine.connect() as conn:
            saga = await coordinator.store.select_saga(conn, saga_id)
        assert saga is not None
        assert saga.status in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED), (
            f"{saga_id} is {saga.status.value}"
        )
        return saga

    return await eventually(terminal, timeout=60, what=f"saga {saga_id} to end")


async def _effects(engine: AsyncEngine, label: str) -> list[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT action FROM archive_svc.effects WHERE label = :label ORDER BY id"),
            {"label": label},
        )
        return [row.action for row in rows]


@pytest.mark.parametrize(
    ("size", "broker_limit"),
    [(OVER_THE_PRODUCER_LIMIT, None), (3 * BROKER_LIMIT, BROKER_LIMIT)],
    ids=["over-the-producer-limit", "refused-by-the-broker"],
)
async def test_an_oversized_reply_is_dead_lettered_and_its_step_undone_with_the_earlier_ones(
    size: int,
    broker_limit: int | None,
    coordinator_settings: Settings,
    running_coordinator: Any,
    topic_reader: Any,
    db_engine: AsyncEngine,
    kafka: Any,
    producer: Any,
) -> None:
    settings = coordinator_settings
    prefix = settings.kafka.topic_prefix
    topics = Topics(prefix)
    if broker_limit is not None:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
        await admin.start()
        try:
            limited = {"max.message.bytes": str(broker_limit)}
            await admin.create_topics([NewTopic(topics.replies, 4, 1, topic_configs=limited)])
        finally:
            await admin.close()
    runner = ServiceRunner(
        archive,
        kafka=KafkaConfig(
            kafka.bootstrap_servers,
            idempotent=kafka.supports_idempotence,
            session_timeout_ms=settings.kafka.session_timeout_ms,
            heartbeat_interval_ms=500,
        ),
        engine=db_engine,
        topics=topics,
        group_id=f"{prefix}archive",
        setup=_install,
    )
    async with (
        running_coordinator(settings, SagaRegistry([ArchiveSaga])) as coordinator,
        runner,
        topic_reader(topics.replies) as replies,
        topic_reader(topics.dead_letters(topics.replies)) as dead_letters,
        topic_reader(topics.commands("archive")) as commands,
    ):
        big = await coordinator.client.start(
            "archive", ArchiveData(label="big", size=size), saga_id="big"
        )
        undone = await _finished(coordinator, big)
        (letter,) = await dead_letters.records(1)
        # Later commands to the same participant are still answered.
        small = await coordinator.client.start(
            "archive", ArchiveData(label="small", size=10), saga_id="small"
        )
        done = await _finished(coordinator, small)
        async with coordinator.store.engine.connect() as conn:
            history = await coordinator.store.select_history(conn, big)

        # A redelivered command is answered from the record: the same stand-in again.
        sent = [decode_envelope(r.value) for r in await commands.published()]
        (fetch_command,) = [
            c for c in sent if c.saga_id == big and c.message_type == Fetch.message_type
        ]
        await producer.send_and_wait(
            topics.commands("archive"),
            fetch_command.to_bytes(),
            key=fetch_command.key(),
            headers=encode_headers(fetch_command.headers()),
        )

        found: list[Envelope] = []

        async def answered_twice() -> list[Envelope]:
            found.extend(
                decode_envelope(r.value)
                for r in await replies.published()
                if decode_headers(r.headers).get("ce_sagacommandid") == fetch_command.command_id
            )
            assert len(found) >= 2, f"{len(found)} answer(s) to the fetch command"
            return found

        answers = await eventually(answered_twice, what="the redelivered command's answer")

    assert undone.status is SagaStatus.COMPENSATED
    assert undone.compensated_steps == ("fetch", "reserve")
    assert await _effects(db_engine, "big") == ["reserve", "fetch", "discard", "release"]
    (failed,) = [h for h in history if h.kind == HistoryKind.STEP_FAILED.value]
    assert failed.step == "fetch"
    assert failed.detail["in_doubt"] is True
    assert "MessageSizeTooLargeError" in failed.detail["undeliverable"]
    assert undone.failure_reason is not None
    assert "reply undeliverable" in undone.failure_reason

    headers = decode_headers(letter.headers)
    assert headers[DeadLetterHeader.REASON] == "unsendable"
    assert int(headers[DeadLetterHeader.VALUE_DROPPED]) > size
    assert headers["ce_sagaid"] == big
    assert headers["ce_sagaoutcome"] == "success"
    assert letter.value is None

    assert done.status is SagaStatus.COMPLETED
    assert await _effects(db_engine, "small") == ["reserve", "fetch"]

    first, again = answers[:2]
    assert first == again
    assert first.outcome is Outcome.SUCCESS
    assert list(first.payload) == [UNDELIVERABLE_KEY]
    assert (
        first.payload[UNDELIVERABLE_KEY]["dead_letter_id"]
        == (headers[DeadLetterHeader.DEAD_LETTER_ID])
    )
    async with db_engine.connect() as conn:
        recorded = await conn.scalar(
            text("SELECT reply FROM archive_svc.saga_processed_commands WHERE command_id = :id"),
            {"id": fetch_command.command_id},
        )
    assert undeliverable_reason(recorded["payload"]) is not None
    assert len(str(recorded)) < 2_000


async def test_an_oversized_reply_in_a_batch_answered_together_is_set_aside_alone(
    topic_prefix: str,
    topic_reader: Any,
    db_engine: AsyncEngine,
    kafka: Any,
    producer: Any,
) -> None:
    topics = Topics(topic_prefix)
    # One saga id, so one partition: the runner's first poll takes both, and answers them in
    # one shared transaction.
    big, small = (
        command_envelope(
            Fetch(label=label, size=size),
            saga_id="s-batch",
            saga_type="archive",
            step="fetch",
            command_id=f"fetch-{label}",
        )
        for label, size in (("big", OVER_THE_PRODUCER_LIMIT), ("small", 10))
    )
    for envelope in (big, small):
        await producer.send_and_wait(
            topics.commands("archive"),
            envelope.to_bytes(),
            key=envelope.key(),
            headers=encode_headers(envelope.headers()),
        )
    runner = ServiceRunner(
        archive,
        kafka=KafkaConfig(kafka.bootstrap_servers, idempotent=kafka.supports_idempotence),
        engine=db_engine,
        topics=topics,
        group_id=f"{topic_prefix}archive",
        setup=_install,
    )
    async with (
        runner,
        topic_reader(topics.replies) as replies,
        topic_reader(topics.dead_letters(topics.replies)) as dead_letters,
    ):
        answers = {e.command_id: e for e in await replies.envelopes(2)}
        (letter,) = await dead_letters.records(1)

    assert undeliverable_reason(answers["fetch-big"].payload) is not None
    assert answers["fetch-small"].payload == {"blob": "x" * 10}
    assert decode_headers(letter.headers)["ce_sagacommandid"] == "fetch-big"
    assert await _effects(db_engine, "big") == ["fetch"]
    assert await _effects(db_engine, "small") == ["fetch"]
    async with db_engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT command_id, reply FROM archive_svc.saga_processed_commands")
        )
        recorded = {row.command_id: row.reply for row in rows}
    assert undeliverable_reason(recorded["fetch-big"]["payload"]) is not None
    assert recorded["fetch-small"]["payload"] == {"blob": "x" * 10}
