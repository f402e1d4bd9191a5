"""Browsing and replaying dead letters (the engine behind ``saga dlq``).

Dead-letter topics are the ``<topic>.dlq`` topics under the configured prefix. Listing reads
them from the beginning without a consumer group, up to the end offsets taken when it starts,
so it always ends and never moves anyone's committed offsets.

Replay sends a dead letter back to its original topic (same key, same body, the original
headers without the dead-letter ones, ``saga_dlt-replay-count`` plus one) **at most once**:
inside one PostgreSQL transaction the dead letter's position is inserted into
``saga.dead_letter_replay`` (``ON CONFLICT DO NOTHING``), the record is sent and its ack
awaited, and only then is the transaction committed. A second replay finds the row and sends
nothing; a send that fails rolls the row back, so the dead letter can be replayed later. A
replayed message that fails again is dead-lettered anew (a new position) with its count.

The one gap is a commit that fails after the broker acknowledged the send: the message went
out but is not recorded. Replaying it again re-sends the same message id (or command id),
which the coordinator's inbox and the participants' processed-commands record drop.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy import select, tuple_
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.core.clock import Clock, SystemClock
from coordinator.core.errors import DeadLetterNotFoundError
from coordinator.store.saga_store import SagaStore
from coordinator.store.schema import dead_letter_replay
from service_sdk.contract import DeadLetterHeader, Header, Topics

__all__ = [
    "DeadLetterAdmin",
    "DeadLetterFilter",
    "ReplayReport",
    "StoredDeadLetter",
    "replay_headers",
]

logger = logging.getLogger(__name__)

DLQ_SUFFIX = ".dlq"

# Headers a dead-letter topic adds; a replay removes them (the count is rewritten).
_DEAD_LETTER_PREFIX = "kafka_dlt-"
_DEAD_LETTER_ONLY = frozenset(
    {
        DeadLetterHeader.REASON,
        DeadLetterHeader.DEAD_LETTER_ID,
        DeadLetterHeader.VALUE_DROPPED,
        DeadLetterHeader.REPLAY_COUNT,
    }
)

Headers = tuple[tuple[str, bytes | None], ...]


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", errors="replace")


def _int(value: str | None) -> int | None:
    try:
        return None if value is None else int(value)
    except ValueError:
        return None


def _from_millis(millis: int | None) -> datetime | None:
    if millis is None or millis < 0:
        return None
    return datetime.fromtimestamp(millis / 1000, tz=UTC)


@dataclass(frozen=True)
class StoredDeadLetter:
    """One record of a dead-letter topic, with what its headers say.

    Attributes:
        dlq_topic: The dead-letter topic it is in.
        partition: Its partition there.
        offset: Its offset there; with the two above, what identifies it.
        timestamp: When it was dead-lettered (the record's timestamp).
        key: The original key.
        value: The original body (None if it had none, or it was too large to keep).
        headers: All of its headers, as received.
        reason: ``saga_dlt-reason``: why it was dead-lettered.
        original_topic: Where it was consumed from, and where a replay sends it.
        original_partition: Its partition there.
        original_offset: Its offset there.
        replay_count: How often it had been replayed before it failed this time.
        saga_id: The ``ce_sagaid`` header, when present.
    """

    dlq_topic: str
    partition: int
    offset: int
    timestamp: datetime | None
    key: bytes | None
    value: bytes | None
    headers: Headers
    reason: str | None
    original_topic: str | None
    original_partition: int | None
    original_offset: int | None
    replay_count: int
    saga_id: str | None

    @classmethod
    def from_record(cls, record: Any) -> StoredDeadLetter:
        """The dead letter of an aiokafka ``ConsumerRecord`` read from a dead-letter topic."""
        headers: Headers = tuple(
            (str(name), None if value is None else bytes(value))
            for name, value in record.headers or ()
        )
        last = {name: _text(value) for name, value in headers}
        return cls(
            dlq_topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            timestamp=_from_millis(record.timestamp),
            key=record.key,
            value=record.value,
            headers=headers,
            reason=last.get(DeadLetterHeader.REASON),
            original_topic=last.get(DeadLetterHeader.ORIGINAL_TOPIC),
            original_partition=_int(last.get(DeadLetterHeader.ORIGINAL_PARTITION)),
            original_offset=_int(last.get(DeadLetterHeader.ORIGINAL_OFFSET)),
            replay_count=max(_int(last.get(DeadLetterHeader.REPLAY_COUNT)) or 0, 0),
            saga_id=last.get(Header.SAGA_ID),
        )

    @property
    def position(self) -> tuple[str, int, int]:
        """``(dlq_topic, partition, offset)``: the dead letter's identity."""
        return (self.dlq_topic, self.partition, self.offset)

    def header(self, name: str) -> str | None:
        """The last value of header ``name`` as text (undecodable bytes replaced)."""
        for key, value in reversed(self.headers):
            if key == name:
                return _text(value)
        return None

    @property
    def exception(self) -> str | None:
        """The exception class that made it a dead letter (``kafka_dlt-exception-fqcn``)."""
        return self.header(DeadLetterHeader.EXCEPTION_FQCN)

    @property
    def exception_message(self) -> str | None:
        """The exception's message (``kafka_dlt-exception-message``)."""
        return self.header(DeadLetterHeader.EXCEPTION_MESSAGE)

    @property
    def consumer_group(self) -> str | None:
        """The consumer group that gave up on it."""
        return self.header(DeadLetterHeader.ORIGINAL_CONSUMER_GROUP)

    @property
    def original_timestamp(self) -> datetime | None:
        """The original record's timestamp."""
        return _from_millis(_int(self.header(DeadLetterHeader.ORIGINAL_TIMESTAMP)))

    def unreplayable_because(self) -> str | None:
        """Why a replay cannot send this dead letter back, or None when it can."""
        if not self.original_topic:
            return "no kafka_dlt-original-topic header"
        if self.dlq_topic != self.original_topic + DLQ_SUFFIX:
            return f"its original topic {self.original_topic!r} is not that of {self.dlq_topic!r}"
        if self.header(DeadLetterHeader.VALUE_DROPPED) is not None:
            return "its body was too large to keep; it is at the original offset"
        if self.key is None and self.value is None:
            return "it has neither key nor body"
        return None

    def as_dict(self, *, full: bool = False) -> dict[str, Any]:
        """A JSON-ready summary; with ``full``, every header and the body as well."""
        result: dict[str, Any] = {
            "dlq_topic": self.dlq_topic,
            "partition": self.partition,
            "offset": self.offset,
            "timestamp": self.timestamp.isoformat() if self.timestamp else None,
            "reason": self.reason,
            "original_topic": self.original_topic,
            "original_partition": self.original_partition,
            "original_offset": self.original_offset,
            "saga_id": self.saga_id,
            "replay_count": self.replay_count,
            "exception": self.exception,
            "exception_message": self.exception_message,
        }
        if full:
            result["consumer_group"] = self.consumer_group
            result["key"] = _text(self.key)
            result["headers"] = [[name, _text(value)] for name, value in self.headers]
        return result


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which dead letters to list or replay; every given criterion must match.

    Attributes:
        topic: The original topic or the dead-letter topic (full names, prefix included).
        reason: ``saga_dlt-reason``, e.g. ``handler_error``.
        saga_id: The ``ce_sagaid`` header.
        since: Dead-lettered at or after this time (timezone-aware).
        until: Dead-lettered before this time (timezone-aware).
        positions: Only these ``(dlq_topic, partition, offset)`` (a selection; None: any).
    """

    topic: str | None = None
    reason: str | None = None
    saga_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    positions: frozenset[tuple[str, int, int]] | None = None

    def __post_init__(self) -> None:
        for name in ("since", "until"):
            value: datetime | None = getattr(self, name)
            if value is not None and value.utcoffset() is None:
                raise ValueError(f"{name} must be timezone-aware, got {value.isoformat()}")

    @property
    def dlq_topic(self) -> str | None:
        """The one dead-letter topic that can hold matches, when a topic is given."""
        if self.topic is None:
            return None
        return self.topic if self.topic.endswith(DLQ_SUFFIX) else self.topic + DLQ_SUFFIX

    def matches(self, letter: StoredDeadLetter) -> bool:
        """True when ``letter`` meets every criterion."""
        if self.topic is not None and self.topic not in (letter.dlq_topic, letter.original_topic):
            return False
        if self.reason is not None and letter.reason != self.reason:
            return False
        if self.saga_id is not None and letter.saga_id != self.saga_id:
            return False
        if self.positions is not None and letter.position not in self.positions:
            return False
        if self.since is not None and (letter.timestamp is None or letter.timestamp < self.since):
            return False
        return self.until is None or (
            letter.timestamp is not None and letter.timestamp < self.until
        )


def replay_headers(letter: StoredDeadLetter) -> list[tuple[str, bytes | None]]:
    """The headers a replay sends: the original ones, without what the dead-letter topic
    added, and ``saga_dlt-replay-count`` one higher."""
    kept = [
        (name, value)
        for name, value in letter.headers
        if not name.startswith(_DEAD_LETTER_PREFIX) and name not in _DEAD_LETTER_ONLY
    ]
    kept.append((DeadLetterHeader.REPLAY_COUNT, str(letter.replay_count + 1).encode()))
    return kept


@dataclass
class ReplayReport:
    """What a replay did (or, in a dry run, would do).

    Attributes:
        dry_run: Nothing was sent or recorded.
        replayed: Sent back to their original topics (in a dry run: would be).
        skipped: Already replayed before; not sent again.
        unreplayable: Dead letters that cannot be sent back, and why.
        failed: Sends that failed (not recorded: a later replay tries again), and the error.
    """

    dry_run: bool
    replayed: list[StoredDeadLetter] = field(default_factory=list)
    skipped: list[StoredDeadLetter] = field(default_factory=list)
    unreplayable: list[tuple[StoredDeadLetter, str]] = field(default_factory=list)
    failed: list[tuple[StoredDeadLetter, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (``saga dlq replay --json``)."""
        return {
            "dry_run": self.dry_run,
            "replayed": [letter.as_dict() for letter in self.replayed],
            "skipped": [letter.as_dict() for letter in self.skipped],
            "unreplayable": [{**letter.as_dict(), "why": why} for letter, why in self.unreplayable],
            "failed": [{**letter.as_dict(), "error": error} for letter, error in self.failed],
        }


class DeadLetterAdmin:
    """Lists, shows and replays the dead letters of one topic namespace.

    Args:
        bootstrap_servers: Kafka to read the dead-letter topics from and replay to.
        database: The coordinator's database (an engine, or the store holding one), where
            replays are recorded; the caller disposes of it.
        topics: The topic naming; only ``.dlq`` topics under its prefix are looked at.
        producer_kwargs: Settings of the replay producer (e.g.
            :func:`coordinator.runtime.kafka.producer_kwargs`); ``bootstrap_servers`` is added.
        client_kwargs: Connection settings (security) for the admin client and consumers.
        clock: Time of the replay records.
        read_timeout_s: Longest a listing may take before it gives up (broker unreachable).
    """

    def __init__(
        self,
        bootstrap_servers: str,
        database: AsyncEngine | SagaStore,
        topics: Topics,
        *,
        producer_kwargs: Mapping[str, Any] | None = None,
        client_kwargs: Mapping[str, Any] | None = None,
        clock: Clock | None = None,
        read_timeout_s: float = 60.0,
    ) -> None:
        self.topics = topics
        self._bootstrap = bootstrap_servers
        self._engine = database.engine if isinstance(database, SagaStore) else database
        self._producer_kwargs = {
            "acks": "all",
            **(producer_kwargs or {}),
            "bootstrap_servers": bootstrap_servers,
        }
        self._client_kwargs = dict(client_kwargs or {})
        self._clock: Clock = clock or SystemClock()
        self._read_timeout_s = read_timeout_s
        self._producer: AIOKafkaProducer | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the replay producer (listing needs none). Idempotent."""
        if self._producer is None:
            producer = AIOKafkaProducer(**self._producer_kwargs)
            await producer.start()
            self._producer = producer

    async def stop(self) -> None:
        """Stop the replay producer. Idempotent; the database stays the caller's."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- browsing --------------------------------------------------------------------------

    def _scoped(self, filters: DeadLetterFilter | None) -> DeadLetterFilter:
        """``filters`` with a topic given without the prefix resolved under it."""
        filters = filters or DeadLetterFilter()
        prefix = self.topics.prefix
        if filters.topic and prefix and not filters.topic.startswith(prefix):
            return dataclasses.replace(filters, topic=prefix + filters.topic)
        return filters

    async def dlq_topics(self) -> builtins.list[str]:
        """The dead-letter topics under the prefix, sorted."""
        return sorted(await self._partitions(None))

    async def _partitions(self, names: Sequence[str] | None) -> dict[str, builtins.list[int]]:
        """Partitions of the given topics (those that exist), or of every DLQ topic."""
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self._bootstrap, client_id="saga-dlq", **self._client_kwargs
        )
        await admin.start()
        try:
            if names is None:
                names = [
                    name
                    for name in await admin.list_topics()
                    if name.startswith(self.topics.prefix) and name.endswith(DLQ_SUFFIX)
                ]
            if not names:
                return {}
            described = await admin.describe_topics(list(names))
        finally:
            await admin.close()
        return {
            topic["topic"]: sorted(p["partition"] for p in topic["partitions"])
            for topic in described
            if topic.get("error_code", 0) == 0 and topic["partitions"]
        }

    def _consumer(self) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            client_id="saga-dlq",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **self._client_kwargs,
        )

    async def list(
        self, filters: DeadLetterFilter | None = None
    ) -> builtins.list[StoredDeadLetter]:
        """Every dead letter matching ``filters``, by topic, partition and offset.

        Raises:
            TimeoutError: The topics could not be read to their end in ``read_timeout_s``.
        """
        filters = self._scoped(filters)
        wanted = [filters.dlq_topic] if filters.dlq_topic else None
        partitions = [
            TopicPartition(topic, partition)
            for topic, numbers in (await self._partitions(wanted)).items()
            for partition in numbers
        ]
        if not partitions:
            return []
        letters: builtins.list[StoredDeadLetter] = []
        consumer = self._consumer()
        await consumer.start()
        try:
            consumer.assign(partitions)
            # The end is fixed when reading starts: dead letters arriving meanwhile are for
            # the next listing, and the listing ends.
            ends: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
            await consumer.seek_to_beginning(*partitions)
            pending = set(partitions)
            async with asyncio.timeout(self._read_timeout_s):
                while True:
                    for tp in builtins.list(pending):
                        if await consumer.position(tp) >= ends[tp]:
                            pending.discard(tp)
                    if not pending:
                        break
                    batch = await consumer.getmany(*pending, timeout_ms=500)
                    for tp, records in batch.items():
                        for record in records:
                            if record.offset < ends[tp]:
                                letter = StoredDeadLetter.from_record(record)
                                if filters.matches(letter):
                                    letters.append(letter)
        finally:
            await consumer.stop()
        letters.sort(key=lambda letter: letter.position)
        return letters

    async def show(self, dlq_topic: str, partition: int, offset: int) -> StoredDeadLetter:
        """The dead letter at ``dlq_topic[partition]@offset``.

        Raises:
            DeadLetterNotFoundError: No such topic, partition or offset (any more).
        """
        where = f"{dlq_topic}[{partition}]@{offset}"
        if partition not in (await self._partitions([dlq_topic])).get(dlq_topic, []):
            raise DeadLetterNotFoundError(f"no dead letter at {where}: no such topic partition")
        tp = TopicPartition(dlq_topic, partition)
        consumer = self._consumer()
        await consumer.start()
        try:
            consumer.assign([tp])
            start = (await consumer.beginning_offsets([tp]))[tp]
            end = (await consumer.end_offsets([tp]))[tp]
            if not start <= offset < end:
                holds = f"offsets {start} to {end - 1}" if end > start else "nothing"
                raise DeadLetterNotFoundError(
                    f"no dead letter at {where}: the partition holds {holds}"
                )
            consumer.seek(tp, offset)
            async with asyncio.timeout(self._read_timeout_s):
                # Past the offset without meeting it: the record is gone (compaction).
                while await consumer.position(tp) <= offset:
                    for record in (await consumer.getmany(tp, timeout_ms=500)).get(tp, []):
                        if record.offset == offset:
                            return StoredDeadLetter.from_record(record)
        finally:
            await consumer.stop()
        raise DeadLetterNotFoundError(f"no dead letter at {where} (compacted away?)")

    # -- replay ----------------------------------------------------------------------------

    async def replayed(self, letters: Iterable[StoredDeadLetter]) -> set[tuple[str, int, int]]:
        """The positions among ``letters`` that were replayed before."""
        positions = [letter.position for letter in letters]
        if not positions:
            return set()
        columns = (
            dead_letter_replay.c.dlq_topic,
            dead_letter_replay.c.dlq_partition,
            dead_letter_replay.c.dlq_offset,
        )
        async with self._engine.connect() as conn:
            rows = await conn.execute(select(*columns).where(tuple_(*columns).in_(positions)))
            return {(row.dlq_topic, row.dlq_partition, row.dlq_offset) for row in rows}

    async def replay(
        self,
        filters: DeadLetterFilter | None = None,
        *,
        dry_run: bool = False,
        actor: str = "saga-cli",
    ) -> ReplayReport:
        """Send every matching dead letter back to its original topic, each at most once.

        Args:
            filters: Which dead letters.
            dry_run: Only report what would be replayed and what was replayed before.
            actor: Who replays, recorded with each replay.
        """
        report = ReplayReport(dry_run=dry_run)
        candidates: builtins.list[StoredDeadLetter] = []
        for letter in await self.list(filters):
            why = letter.unreplayable_because()
            if why is None:
                candidates.append(letter)
            else:
                report.unreplayable.append((letter, why))
        if dry_run:
            done = await self.replayed(candidates)
            for letter in candidates:
                (report.skipped if letter.position in done else report.replayed).append(letter)
            return report
        await self.start()
        for letter in candidates:
            await self._replay_one(letter, actor, report)
        logger.info(
            "replayed %d dead letter(s); %d already replayed, %d failed, %d unreplayable",
            len(report.replayed),
            len(report.skipped),
            len(report.failed),
            len(report.unreplayable),
        )
        return report

    async def _replay_one(self, letter: StoredDeadLetter, actor: str, report: ReplayReport) -> None:
        producer = self._producer
        assert producer is not None  # started by replay()
        assert letter.original_topic is not None  # checked by unreplayable_because()
        sent = False
        try:
            async with self._engine.begin() as conn:
                # ON CONFLICT DO NOTHING: a dead letter replayed before (or being replayed by a
                # concurrent run, whose row we wait for) is skipped, never sent twice.
                claimed = await conn.execute(
                    insert(dead_letter_replay)
                    .values(
                        dlq_topic=letter.dlq_topic,
                        dlq_partition=letter.partition,
                        dlq_offset=letter.offset,
                        replayed_at=self._clock.now(),
                        actor=actor,
                        original_topic=letter.original_topic,
                    )
                    .on_conflict_do_nothing()
                    .returning(dead_letter_replay.c.dlq_offset)
                )
                if claimed.first() is None:
                    report.skipped.append(letter)
                    return
                # Acknowledged before the commit: a failed send rolls the claim back.
                delivery = await producer.send(
                    letter.original_topic,
                    letter.value,
                    key=letter.key,
                    headers=replay_headers(letter),
                )
                await delivery
                sent = True
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            if sent:
                error = f"sent, but recording the replay failed: {error}"
            logger.warning("replay of %s[%d]@%d failed: %s", *letter.position, error)
            report.failed.append((letter, error))
            return
        report.replayed.append(letter)
