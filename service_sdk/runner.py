"""The runtime of a participant service: consume commands, run handlers, publish replies.

For every batch from ``<prefix><service>.commands``, record by record in partition order:

1. Decode the envelope; a record that is not a valid command of this service goes to
   ``<topic>.dlq`` with ``kafka_dlt-*`` headers, and the consumer moves on. ``saga.fence`` is
   valid for every service: it needs no handler.
2. In one PostgreSQL transaction for the whole batch (one commit, so one WAL flush, however
   many commands; should anything in it fail, it is rolled back as a whole and the commands
   are answered one by one, each in a transaction of its own), claim each command id in
   ``<schema>.saga_processed_commands``.
   A command already answered gets its recorded reply again (same message id, so the
   coordinator's inbox drops it); a deferred one gets nothing; a fenced one (a tombstone) gets
   its refusal, and its handler never runs. Otherwise the handler runs in a SAVEPOINT of that
   transaction and its reply is recorded with it.
3. Publish the reply to the command's ``reply_to`` (default ``saga.replies``), keyed by saga id.

Only once Kafka acknowledged every reply and dead letter of the batch are its offsets
committed, so a crash re-delivers commands (answered from the record) rather than losing
replies. What Kafka did not acknowledge is published again, with backoff, until it is (or the
runner stops: then nothing of the batch is committed and it is read again).

**Tombstones.** When the coordinator gives up on a command X that may still run, it sends an
*undo* carrying ``compensates = X``: the step's compensation, or a ``saga.fence`` for a step
without one. In the undo's transaction the runner settles X for good:

- X has no record (it never ran): a tombstone is recorded for X, the compensation handler
  does not run, and the undo is answered success ``{"fenced": true}``. X, arriving later (any
  copy, any attempt), is refused without running its handler: outcome FAILURE, error
  ``fenced: ...``, payload ``{"fenced": true, "fenced_by": <undo's command id>}``.
- X was refused (a recorded failure) or is fenced already: ``{"fenced": true}``, no handler.
- X is deferred (pending): its record becomes a tombstone, the compensation does not run,
  the undo gets ``{"fenced": true}``, and :meth:`ServiceRunner.complete_later` /
  :meth:`~ServiceRunner.reject_later` of X raise :class:`~service_sdk.errors.CommandFencedError`
  (the service undoes or abandons whatever its deferred work started).
- X succeeded: a compensation runs its handler as usual (it undoes the effect); a fence
  answers ``{"fenced": false, "executed": "success"}`` (the effect exists and cannot be undone:
  the coordinator hands the saga to an operator).

The undo is recorded under its own command id like any command, so its copies get the same
answer. **Look-ahead**: before running handlers the runner scans the batch for undos (by their
``ce_sagacompensates`` header); a command of the batch that one of them names, and that has no
record yet, is tombstoned and refused instead of run, as if its undo had come first. That is
what makes a participant back from an outage refuse the commands the saga already gave up on,
rather than run them and then undo them. (An undo in a later batch than its command cannot be
seen ahead: then the command runs and the undo compensates it.)

**Heartbeats.** Beside the consume loop, for exactly as long, the runner publishes a
:class:`~service_sdk.contract.Heartbeat` to ``<prefix>saga.heartbeats`` (key: the service name)
at start and then every ``heartbeat_interval_s``. It lists, once, the commands whose handler
started since the previous heartbeat and that are still unanswered when it is sent: handlers
still running, deferred commands, and commands dead-lettered after their handler ran. The
coordinator reads them as "alive" (a command nobody has picked up yet is queued, not late) and
"picked up" (the step's timeout runs from then). A failed send is retried at the next tick.
Heartbeats mean *making progress*: while one of the runner's retry loops is failing (its
database is unreachable, its replies are not acknowledged) or its loop has neither polled nor
started or answered a command within ``progress_timeout_s``, heartbeats are withheld, so the
coordinator stops counting the service alive and the deadlines of commands it does not pick
up run out (see :mod:`service_sdk._private.progress`).

**Outages.** Failures that are about reaching PostgreSQL or Kafka (:mod:`service_sdk.transient`)
are waited out, never held against a command:

- :meth:`ServiceRunner.start` does not fail while the database or the brokers are unreachable
  (or PostgreSQL is still starting up): it returns, and the runner keeps trying in the
  background, with backoff, until it consumes (:attr:`~ServiceRunner.ready`);
- a command's transaction that fails because the database went away is run again once it is
  back, without counting as a handler attempt: it is never dead-lettered for that;
- a producer whose idempotence state the broker lost (after a long outage every send fails
  with ``OutOfOrderSequenceNumber``) is closed and recreated (:mod:`service_sdk.producer`),
  and what it did not deliver is published again;
- a reply Kafka will never take (larger than ``KafkaConfig.max_request_size`` or the topic's
  ``max.message.bytes``, or bound for an invalid topic) is not retried: it is dead-lettered and
  the command answered by a small stand-in recorded in its place
  (:mod:`service_sdk._private.undeliverable`), so the batch behind it goes on;
- every retry loop backs off (up to 5 s) and logs at most once per 30 s
  (:class:`~service_sdk.retry.RetryLog`); aiokafka's own per-attempt error lines are
  throttled likewise (:mod:`service_sdk.kafka_logs`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, Self

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service_sdk._private import fencing
from service_sdk._private.heartbeats import HeartbeatPublisher, PickupLog, instance_id
from service_sdk._private.idempotency import ProcessedCommands
from service_sdk._private.processing import (
    Answer,
    BatchHandlerError,
    CommandProcessor,
    log_extra,
)
from service_sdk._private.progress import Progress
from service_sdk._private.undeliverable import (
    TOPIC_NAME,
    Screened,
    UndeliverableReplies,
    without_body,
)
from service_sdk.config import KafkaConfig
from service_sdk.contract.envelope import Command, Envelope, MessageKind, Outcome, decode_envelope
from service_sdk.contract.headers import Header, decode_headers
from service_sdk.contract.heartbeat import Heartbeat
from service_sdk.contract.reasons import DeadLetterReason
from service_sdk.contract.topics import Topics
from service_sdk.dead_letters import DeadLetterRecord
from service_sdk.errors import (
    CommandRejected,
    ContractError,
    MalformedMessageError,
    UnknownMessageTypeError,
)
from service_sdk.kafka_logs import throttle_kafka_logs
from service_sdk.observer import NoObserver, RunnerObserver
from service_sdk.offsets import PendingOffsets
from service_sdk.producer import ProducerFactory, ProducerHandle
from service_sdk.retry import RetryEvent, RetryLog, RetryPolicy, call_with_retries
from service_sdk.service import Service, reply_envelope, reply_payload
from service_sdk.transient import is_transient, is_transient_database_error, is_unsendable

__all__ = ["RunnerObserver", "ServiceRunner"]

logger = logging.getLogger(__name__)

_POLL_TIMEOUT_MS = 200
_MAX_CONNECT_BACKOFF_S = 5.0
_MIN_PROGRESS_TIMEOUT_S = 5.0
# A reply waits for the commit of the transaction it shares with the rest of its batch, and a
# step's timeout runs from its command's pickup: a shared transaction takes no more commands
# once those it answered took this long.
_SHARED_TRANSACTION_S = 0.2


def _record_extra(record: Any) -> dict[str, Any]:
    """The saga coordinates of a record that may not even decode: from its headers."""
    headers = decode_headers(record.headers)
    return {
        "saga_id": headers.get(Header.SAGA_ID),
        "step": headers.get(Header.STEP),
        "message_id": headers.get(Header.ID),
        "command_id": headers.get(Header.COMMAND_ID),
    }


class _StoppingError(Exception):
    """The runner is stopping while waiting for the database."""


@dataclass(frozen=True)
class _Work:
    """A command of the batch that passed screening, with the undo queued behind it."""

    envelope: Envelope
    command: Command
    undo: Envelope | None


@dataclass(frozen=True)
class _Publication:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]]
    answering: Envelope | None = None
    """For a reply: the command it answers (a reply Kafka refuses is set aside)."""
    reply: Envelope | None = None
    dead_letter: bool = False


class _RolledBackError(Exception):
    """A command of a shared transaction failed: the whole transaction is rolled back."""

    def __init__(self, failure: tuple[int, Exception]) -> None:
        super().__init__(f"command {failure[0]} of the batch failed: {failure[1]!r}")
        self.failure = failure


class _CommitOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    """Commits the answered commands' offsets before their partitions move to another member."""

    def __init__(self, commit: Callable[[Collection[Any]], Awaitable[None]]) -> None:
        self._commit = commit

    async def on_partitions_revoked(self, revoked: Collection[Any]) -> None:
        await self._commit(revoked)

    async def on_partitions_assigned(self, assigned: object) -> None:
        return None


class ServiceRunner:
    """Runs one :class:`~service_sdk.service.Service` against Kafka and its PostgreSQL.

    Args:
        service: The service declaration with its handlers.
        kafka: How to reach Kafka.
        engine: The service's database; handlers write through the same transaction that
            records the command as processed.
        topics: Topic naming (prefix); default names when None.
        group_id: Consumer group; ``"<service>-service"`` when None.
        max_batch: Most records taken per poll.
        handler_attempts: Runs of a handler raising an unexpected error before the command
            is dead-lettered (reason ``handler_error``). A transient database error (the
            database restarting, say) is not counted: the command waits for the database.
        handler_backoff_s: Wait after the first failed run; doubles per further run. Also
            the first wait while the database or Kafka is unreachable (doubling up to 5 s).
        heartbeat_interval_s: Seconds between heartbeats to ``saga.heartbeats``; 0 or None
            sends none (the coordinator then counts deadlines from the send).
        progress_timeout_s: A runner that has neither polled nor started or answered a command
            for this long makes no progress: it withholds heartbeats and is not
            :attr:`healthy`. Default: three heartbeat intervals, at least 5 s (30 s without
            heartbeats).
            A handler running longer than this holds heartbeats back until it ends.
        observer: Metrics hooks.
        setup: Creates the service's own tables, in the start-up transaction that creates
            the processed-commands table (retried with it while the database is away).
        producer_factory: Makes a new, not yet started producer; the default makes an
            ``AIOKafkaProducer`` from ``kafka``. A producer that lost its idempotence state
            on the broker is stopped and replaced by a new one from here.
        throttle_kafka_logs: Attach :func:`service_sdk.kafka_logs.throttle_kafka_logs` to
            aiokafka's loggers at start (its per-attempt connection errors at most once per
            30 s); False leaves aiokafka's logging as it is.
        commit_interval_s: The longest an answered command's offset waits for its commit
            (0: after every batch). Committing per batch costs a broker round trip each; a
            crash re-reads at most this much, answered from the processed-commands record.
            Offsets are committed before partitions move and at stop.

    Attributes:
        instance: This runner's unique id in its heartbeats (``<host>-<pid>-<hex>``).

    Example::

        async with ServiceRunner(inventory, kafka=KafkaConfig("kafka:9092"), engine=engine) as runner:
            await runner.wait()
    """

    def __init__(
        self,
        service: Service,
        *,
        kafka: KafkaConfig,
        engine: AsyncEngine,
        topics: Topics | None = None,
        group_id: str | None = None,
        max_batch: int = 200,
        handler_attempts: int = 3,
        handler_backoff_s: float = 0.2,
        heartbeat_interval_s: float | None = 2.0,
        progress_timeout_s: float | None = None,
        observer: RunnerObserver | None = None,
        setup: Callable[[AsyncConnection], Awaitable[None]] | None = None,
        producer_factory: ProducerFactory | None = None,
        throttle_kafka_logs: bool = True,
        commit_interval_s: float = 0.2,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if heartbeat_interval_s is not None and heartbeat_interval_s < 0:
            raise ValueError("heartbeat_interval_s must be at least 0 (0 or None: no heartbeats)")
        if handler_attempts < 1:
            raise ValueError("handler_attempts must be at least 1")
        if handler_backoff_s < 0:
            raise ValueError("handler_backoff_s must be at least 0")
        if progress_timeout_s is not None and not progress_timeout_s > 0:
            raise ValueError("progress_timeout_s must be more than 0")
        self.service = service
        self.topics = topics if topics is not None else Topics()
        self.group_id = group_id if group_id is not None else f"{service.name}-service"
        self.topic = self.topics.commands(service.name)
        self._kafka = kafka
        self._engine = engine
        self._setup = setup
        self._max_batch = max_batch
        self._offsets = PendingOffsets(commit_interval_s)
        self._handler_attempts = handler_attempts
        self._handler_backoff_s = handler_backoff_s
        self._throttle_kafka_logs = throttle_kafka_logs
        self._handler_retries = RetryPolicy(
            initial_backoff_s=handler_backoff_s,
            max_backoff_s=math.inf,
            max_attempts=handler_attempts,
        )
        # An unreachable database or broker is not the command's fault: wait for it, however
        # long, backing off so that an outage costs neither CPU nor log lines.
        connect_backoff_s = max(handler_backoff_s, 0.05)
        self._connect_retries = RetryPolicy(
            initial_backoff_s=connect_backoff_s,
            max_backoff_s=max(connect_backoff_s, _MAX_CONNECT_BACKOFF_S),
        )
        name = f"service {service.name}"
        self._start_log = RetryLog(logger, f"{name}: starting (database and Kafka)")
        self._connect_log = RetryLog(logger, f"{name}: connecting to the database")
        self._database_log = RetryLog(logger, f"{name}: a command's transaction (database)")
        self._poll_log = RetryLog(logger, f"{name}: polling Kafka")
        self._publish_log = RetryLog(logger, f"{name}: publishing replies")
        self._batch_log = RetryLog(logger, f"{name}: processing a batch", exc_info=True)
        self._observer: RunnerObserver = observer if observer is not None else NoObserver()
        self._store = ProcessedCommands(service.schema)
        self._producers = ProducerHandle(
            producer_factory or functools.partial(AIOKafkaProducer, **kafka.producer_kwargs()),
            name=name,
        )
        self._consumer: Any = None
        self._installed = False
        self._task: asyncio.Task[None] | None = None
        self._running = False
        self._stopping = asyncio.Event()
        self._stopped = False
        self.instance = instance_id()
        if progress_timeout_s is None:
            # Well above the poll timeout: an idle runner polls every 0.2 s.
            progress_timeout_s = (
                max(3 * heartbeat_interval_s, _MIN_PROGRESS_TIMEOUT_S)
                if heartbeat_interval_s
                else 30.0
            )
        self._progress = Progress(progress_timeout_s)
        self._pickups = PickupLog(enabled=bool(heartbeat_interval_s))
        self._processor = CommandProcessor(service, self._store, self._pickups, self.topic)
        self._undeliverable = UndeliverableReplies(
            self._store, self.topics, self.group_id, kafka.max_request_size
        )
        self._heartbeats: HeartbeatPublisher | None = None
        if heartbeat_interval_s:
            self._heartbeats = HeartbeatPublisher(
                service=service.name,
                instance=self.instance,
                interval_s=heartbeat_interval_s,
                send=self._send_heartbeat,
                pickups=self._pickups,
                stop=self._stopping,
                progress=self._progress,
            )

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True while the runner consumes: started, connected to its database and Kafka, and
        not stopped. False while :meth:`start` keeps trying in the background."""
        return self._running and not self._stopped

    @property
    def healthy(self) -> bool:
        """True while :attr:`ready` and making progress, which is what its heartbeats say: no
        retry loop failing (database, publishing, polling) and a poll, a handler start or an
        answer within ``progress_timeout_s``."""
        return self.ready and self._progress.live()

    async def install_schema(self) -> None:
        """Create ``<schema>.saga_processed_commands`` if it does not exist (and run ``setup``).

        One attempt; :meth:`start` retries it while the database is unreachable.
        """
        conn = await self._open_connection()
        try:
            async with conn.begin():
                await self._store.install(conn)
                if self._setup is not None:
                    await self._setup(conn)
        except BaseException as exc:
            await self._discard_if_broken(conn, exc)
            raise
        finally:
            await conn.close()

    async def start(self) -> None:
        """Install the schema, connect to Kafka, start consuming and heartbeating in a task.

        Returns once the runner consumes, or as soon as a first attempt failed for a
        transient reason (the database or Kafka unreachable): the runner then keeps trying in
        the background, with backoff, and is not :attr:`ready` until it consumes.

        Raises:
            RuntimeError: The runner was stopped before (a runner is started once).
            Exception: A failure that is not transient (a refused password, say).
        """
        if self._stopped:
            raise RuntimeError("a stopped ServiceRunner cannot be started again")
        if self._task is not None:
            return
        if self._throttle_kafka_logs:
            throttle_kafka_logs()
        started = asyncio.Event()
        task = asyncio.create_task(self._run(started), name=f"{self.service.name}-runner")
        self._task = task
        try:
            await started.wait()
        except BaseException:
            task.cancel()
            await asyncio.wait([task])
            self._task = None
            await self._close_clients()
            raise
        if task.done() and not task.cancelled() and (error := task.exception()) is not None:
            self._task = None
            raise error

    async def stop(self) -> None:
        """Finish the batch in hand, publish its replies, commit its offsets, close Kafka.

        Idempotent. A runner still trying to start gives up at once. The engine is the
        caller's and stays open.
        """
        if self._stopped:
            return
        self._stopped = True
        self._stopping.set()
        if self._task is not None:
            if not self._running:
                self._task.cancel()  # still connecting: nothing to finish
            # wait() rather than await: a loop that failed was logged, and the clients
            # must be closed anyway.
            await asyncio.wait([self._task])
        await self._close_clients()
        logger.info("service %s stopped", self.service.name)

    async def wait(self) -> None:
        """Wait until the consume loop ends (after :meth:`stop`, or a fatal error).

        Raises:
            Exception: The error that ended the loop.
        """
        if self._task is None:
            raise RuntimeError("the runner is not started")
        await asyncio.shield(self._task)

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

    async def _open(self) -> None:
        """One attempt at what the runner needs to consume; what succeeded is kept."""
        if not self._installed:
            await self.install_schema()
            self._installed = True
        await self._producers.current()
        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                group_id=self.group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                **self._kafka.consumer_kwargs(),
            )
            consumer.subscribe([self.topic], listener=_CommitOnRevoke(self._commit_pending))
            try:
                await consumer.start()
            except BaseException:
                with contextlib.suppress(Exception):
                    await consumer.stop()
                raise
            self._consumer = consumer

    async def _close_clients(self) -> None:
        consumer, self._consumer = self._consumer, None
        try:
            if consumer is not None:
                await consumer.stop()
        finally:
            await self._producers.stop()

    # -- deferred replies ------------------------------------------------------------------

    async def complete_later(
        self, command_id: str, payload: BaseModel | Mapping[str, Any] | None = None
    ) -> Envelope:
        """Answer a deferred command with success, record the reply and publish it.

        Idempotent: once answered, a command's recorded reply is published again (same
        message id) and returned, whatever the later call asks.

        Raises:
            LookupError: No deferred or answered command has this id.
            CommandFencedError: The saga gave up on the command and undid it while it was
                deferred; the service must undo or abandon what the deferred work did.
        """
        data = reply_payload(payload)
        return await self._finish_later(
            command_id,
            lambda command: reply_envelope(
                command, self.service.name, Outcome.SUCCESS, payload=data
            ),
        )

    async def reject_later(
        self,
        command_id: str,
        reason: str,
        *,
        retryable: bool = False,
        data: Mapping[str, Any] | None = None,
    ) -> Envelope:
        """Answer a deferred command with a rejection, like a handler raising ``CommandRejected``.

        A final rejection is recorded (idempotent, as :meth:`complete_later`); a retryable one
        forgets the command, so the coordinator's re-send runs the handler again.

        Raises:
            LookupError: No deferred or answered command has this id.
            CommandFencedError: The command was fenced while deferred (see
                :meth:`complete_later`).
        """
        outcome = Outcome.RETRYABLE if retryable else Outcome.FAILURE
        return await self._finish_later(
            command_id,
            lambda command: reply_envelope(
                command, self.service.name, outcome, payload=dict(data or {}), error=reason
            ),
        )

    async def _finish_later(
        self, command_id: str, build: Callable[[Envelope], Envelope]
    ) -> Envelope:
        if not self.ready:
            raise RuntimeError("the runner is not running")
        async with self._engine.begin() as conn:
            reply, command = await self._processor.finish_later(conn, command_id, build)
            screened = await self._undeliverable.screen(conn, command, reply)
        for publication in self._publications(screened, command):
            await (await self._send(publication))
        reply = screened.reply
        self._pickups.answered(command_id)
        logger.info(
            "deferred command %s answered: %s",
            command_id,
            reply.outcome,
            extra={"saga_id": reply.saga_id, "command_id": command_id},
        )
        return reply

    # -- heartbeats ------------------------------------------------------------------------

    async def _send_heartbeat(self, heartbeat: Heartbeat) -> None:
        await self._producers.send_and_wait(
            self.topics.heartbeats, value=heartbeat.to_bytes(), key=self.service.name.encode()
        )

    # -- the consume loop ------------------------------------------------------------------

    async def _run(self, started: asyncio.Event) -> None:
        """Connect (retrying while the database or Kafka is away), then consume until stopped;
        heartbeats beside the consume loop, for exactly as long."""

        def on_retry(event: RetryEvent) -> None:
            self._progress.failing("starting", event.error)
            self._start_log(event)
            started.set()  # start() returns; the runner keeps trying in the background

        try:
            await call_with_retries(
                self._open,
                self._connect_retries,
                retry_on=is_transient,
                on_retry=on_retry,
                stop=self._stopping,
            )
        except BaseException as exc:
            if self._stopping.is_set():
                started.set()
                if isinstance(exc, Exception):
                    return  # stopped before it could start: its failures were logged
                raise  # stop() cancelled the attempt; it closes the clients
            if started.is_set() and isinstance(exc, Exception):
                logger.exception("service %s: cannot start", self.service.name)
            try:
                await self._close_clients()
            finally:
                started.set()  # start() raises what this raises (the task ends right here)
            raise
        self._progress.recovered("starting")
        self._progress.advanced()
        self._running = True
        started.set()
        logger.info(
            "service %s consuming %s as group %s", self.service.name, self.topic, self.group_id
        )
        heartbeats: asyncio.Task[None] | None = None
        if self._heartbeats is not None:
            heartbeats = asyncio.create_task(
                self._heartbeats.run(), name=f"{self.service.name}-heartbeats"
            )
            heartbeats.add_done_callback(self._heartbeats_ended)
        try:
            await self._consume()
        finally:
            self._running = False
            # A runner that no longer consumes must not look alive to the coordinator.
            if heartbeats is not None:
                heartbeats.cancel()
                await asyncio.wait([heartbeats])

    def _heartbeats_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "service %s: heartbeats stopped", self.service.name, exc_info=task.exception()
            )

    async def _consume(self) -> None:
        polling = self._progress.on_retry("polling", self._poll_log)
        processing = self._progress.on_retry("processing", self._batch_log)
        try:
            while not self._stopping.is_set():
                batch = await call_with_retries(
                    self._poll,
                    self._connect_retries,
                    retry_on=is_transient,
                    on_retry=polling,
                    stop=self._stopping,
                )
                self._progress.recovered("polling")
                self._progress.advanced()
                if batch:
                    # An unexpected failure (a bug) takes the batch again after a backoff:
                    # its answered commands are answered from the record.
                    await call_with_retries(
                        functools.partial(self._process_batch, batch),
                        self._connect_retries,
                        on_retry=processing,
                        stop=self._stopping,
                    )
                    self._progress.recovered("processing")
                elif self._offsets.due():
                    await self._commit_pending()
            await self._commit_pending()
        except Exception:
            if self._stopping.is_set():
                return  # stopping while Kafka was away: the failures were logged
            logger.exception("service %s: consume loop failed", self.service.name)
            raise

    async def _poll(self) -> dict[Any, list[Any]]:
        batch: dict[Any, list[Any]] = await self._consumer.getmany(
            timeout_ms=round(1000 * self._offsets.wait_s(_POLL_TIMEOUT_MS / 1000)),
            max_records=self._max_batch,
        )
        return batch

    async def _process_batch(self, batch: dict[Any, list[Any]]) -> None:
        done: dict[Any, int] = {}
        deliveries: list[tuple[_Publication, asyncio.Future[Any]]] = []
        ahead = self._look_ahead(batch)
        planned = [
            (tp, record, self._screen(record, ahead))
            for tp, records in batch.items()
            for record in records
        ]
        try:
            pending = planned
            while pending:
                answered, stop = await self._answer_batch(
                    [(record, work) for _, record, work in pending if isinstance(work, _Work)]
                )
                rest: list[tuple[Any, Any, _Work | list[_Publication]]] = []
                for n, (tp, record, work) in enumerate(pending):
                    if work is stop:
                        # Its transaction's time was up: what was committed goes out now.
                        rest = pending[n:]
                        break
                    if not isinstance(work, _Work):
                        publications = work
                    elif id(work) in answered:
                        publications = answered[id(work)]
                    else:
                        publications = await self._execute_with_retries(record, work)
                    for publication in publications:
                        deliveries.append((publication, await self._send(publication)))
                    done[tp] = record.offset + 1
                    self._progress.advanced()
                pending = rest
        except _StoppingError:
            logger.info("service %s: stopping in the middle of a batch", self.service.name)
        except BaseException:
            # Every send is awaited, so that no failed future is left unretrieved.
            await asyncio.gather(*(future for _, future in deliveries), return_exceptions=True)
            raise
        if not await self._deliver(deliveries):
            # Stopping with replies not acknowledged: nothing of this batch is committed, so it
            # is read again and answered from the record: a reply is never lost.
            return
        self._offsets.add(done)
        if self._offsets.due():
            await self._commit_pending()

    async def _answer_batch(
        self, works: Sequence[tuple[Any, _Work]]
    ) -> tuple[dict[int, list[_Publication]], _Work | None]:
        """Answer the batch's commands together, a transaction for many; returns the
        publications of those answered, by ``id()`` of their work item, and the first command
        left for a later transaction because this one's time was up (None: none was).

        Handlers run without savepoints (two round trips fewer per command), and a batch
        handler answers its run of commands at once, until one of them fails or rejects its
        command; then nothing of the transaction is kept. After a rejection (a business
        answer, frequent in some services) or a batch handler's failure the batch is taken
        again with a savepoint per handler, so the commands before it run once more and the
        batch is rolled back at most once. After a failure, the commands before it are answered
        again together, it is answered alone (that run counted as its first attempt), and
        the commands after it are taken together again. Those not answered here (the shared
        transaction itself failed) are left to the caller to answer one by one.
        """
        answered: dict[int, list[_Publication]] = {}
        pending = list(works)
        isolated = False
        while len(pending) > 1:
            committed, failure, stopped = await self._execute_together(
                [work for _, work in pending], isolated=isolated
            )
            answered.update(committed)
            if stopped is not None:
                return answered, pending[stopped][1]
            if failure is None:
                break
            index, error = failure
            if not isolated:
                if isinstance(error, CommandRejected | BatchHandlerError):
                    # Which command's writes to undo is known only with a savepoint each.
                    isolated = True
                    continue
                # Nothing was kept: the commands before it are answered again, together.
                if index == 1:
                    first_record, first = pending[0]
                    answered[id(first)] = await self._execute_with_retries(first_record, first)
                elif index > 1:
                    before, stop = await self._answer_batch(pending[:index])
                    answered.update(before)
                    if stop is not None:
                        return answered, stop
            # (With savepoints, its writes were undone and the commands before it committed.)
            record, work = pending[index]
            answered[id(work)] = await self._execute_with_retries(
                record, work, None if is_transient_database_error(error) else error
            )
            pending = pending[index + 1 :]
        return answered, None

    async def _execute_together(
        self, works: Sequence[_Work], *, isolated: bool = False
    ) -> tuple[dict[int, list[_Publication]], tuple[int, Exception] | None, int | None]:
        """Answer commands in ONE transaction: one commit (one WAL flush) and a few
        statements for all of them (see ``CommandProcessor.answer_batch``).

        Returns:
            The publications of the commands committed, by ``id()`` of their work item; and
            the first command that failed (its index and error) when one did: nothing of it
            is committed; without ``isolated`` (savepoints) nothing at all is, since its
            writes cannot be told from the others', with it the commands before it are.
            And the index of the first command not run because the transaction's time
            (``_SHARED_TRANSACTION_S``) was up. When the transaction as a whole fails (the
            database went away), nothing is committed and all three are empty.
        """
        started = time.monotonic()
        try:
            conn = await self._open_connection()
        except Exception:
            return {}, None, None
        try:
            async with conn.begin():
                answers, failure, stopped = await self._processor.answer_batch(
                    conn,
                    [(work.envelope, work.command, work.undo) for work in works],
                    budget_s=_SHARED_TRANSACTION_S,
                    isolated=isolated,
                )
                if failure is not None and not isolated:
                    raise _RolledBackError(failure)
                screened = [
                    await self._screen_reply(conn, work.envelope, answer)
                    for work, answer in zip(works, answers, strict=False)
                ]
        except _RolledBackError as rolled_back:
            return {}, rolled_back.failure, None
        except Exception as exc:
            await self._discard_if_broken(conn, exc)
            logger.debug("service %s: shared transaction failed: %r", self.service.name, exc)
            return {}, None, None
        except BaseException as exc:
            await self._discard_if_broken(conn, exc)
            raise
        finally:
            await conn.close()
        committed = {
            id(work): self._answered(work.envelope, answer, reply, started)
            for work, answer, reply in zip(works, answers, screened, strict=False)
        }
        return committed, failure, stopped

    async def _deliver(self, deliveries: list[tuple[_Publication, asyncio.Future[Any]]]) -> bool:
        """Wait until Kafka acknowledged every publication, publishing again (with backoff,
        on a new producer if the old one lost its state) what it did not. What Kafka refuses
        for good (a reply over the broker's size limit, say) is set aside and replaced.

        Returns:
            True when all were acknowledged; False when the runner stopped first.
        """
        in_flight = deliveries
        unsent: list[_Publication] = []

        async def attempt() -> None:
            nonlocal in_flight, unsent
            while True:
                if unsent:
                    in_flight = [(p, await self._send(p)) for p in unsent]
                results = await asyncio.gather(
                    *(future for _, future in in_flight), return_exceptions=True
                )
                failed = [
                    (publication, result)
                    for (publication, _), result in zip(in_flight, results, strict=True)
                    if isinstance(result, BaseException)
                ]
                unsent, in_flight = [publication for publication, _ in failed], []
                if not failed:
                    return
                replaced = await self._set_aside_refused(failed)
                if not replaced:
                    error = failed[0][1]
                    if isinstance(error, Exception):
                        raise error
                    raise KafkaError(f"a delivery ended without an answer: {error!r}")
                # Send the replacements (and retry the rest) at once: nothing waits for Kafka.
                unsent = [r for p in unsent for r in replaced.get(id(p), [p])]

        try:
            await call_with_retries(
                attempt,
                self._connect_retries,
                on_retry=self._progress.on_retry("publishing", self._publish_log),
                stop=self._stopping,
            )
        except Exception:
            if self._stopping.is_set():
                return False
            raise  # not reached: every failure is retried until stop
        self._progress.recovered("publishing")
        return True

    async def _set_aside_refused(
        self, failed: Sequence[tuple[_Publication, BaseException]]
    ) -> dict[int, list[_Publication]]:
        """What replaces each publication Kafka refused for good (by ``id``): a reply becomes
        its dead letter and a stand-in (recorded in its place), a dead letter loses its body.
        Other failures are not in the result: they are retried."""
        replaced: dict[int, list[_Publication]] = {}
        for publication, error in failed:
            if not is_unsendable(error):
                continue
            if publication.answering is not None and publication.reply is not None:
                command, reply = publication.answering, publication.reply
                conn = await self._connect()
                try:
                    async with conn.begin():
                        screened = await self._undeliverable.set_aside(conn, command, reply, error)
                except BaseException as exc:
                    await self._discard_if_broken(conn, exc)
                    raise
                finally:
                    await conn.close()
                replaced[id(publication)] = self._publications(screened, command)
            elif publication.dead_letter and publication.value is not None:
                logger.error(
                    "service %s: a dead letter to %s refused (%s); dropping its %d-byte body",
                    self.service.name,
                    publication.topic,
                    error,
                    len(publication.value),
                )
                replaced[id(publication)] = [
                    replace(
                        publication,
                        value=None,
                        headers=without_body(publication.value, publication.headers),
                    )
                ]
        return replaced

    def _look_ahead(self, batch: dict[Any, list[Any]]) -> dict[str, Envelope]:
        """The commands this batch's undos name: they are refused rather than run, as if
        their undo had arrived first (a participant back from an outage finds both queued)."""
        undos: list[Envelope] = []
        for records in batch.values():
            for record in records:
                # The header says which records are undos without parsing every body.
                if not any(name == Header.COMPENSATES for name, _ in record.headers or ()):
                    continue
                try:
                    undos.append(decode_envelope(record.value))
                except MalformedMessageError:
                    continue  # dead-lettered when its turn comes
        return fencing.fences_ahead(undos, self.service.understands)

    async def _commit_pending(self, partitions: Collection[Any] | None = None) -> None:
        """Commit the pending offsets (of ``partitions`` only, if given)."""
        offsets = self._offsets.take(partitions)
        if not offsets or self._consumer is None:
            return
        try:
            await self._consumer.commit(offsets)
        except KafkaError as exc:
            # Usually a rebalance moved the partition: its new owner re-reads these records
            # and answers them from the processed-commands record.
            logger.warning("service %s: offset commit failed: %r", self.service.name, exc)

    async def _send(self, publication: _Publication) -> asyncio.Future[Any]:
        """Queue one publication; a failure to queue it is a failed future, not an error."""
        return await self._producers.send(
            publication.topic,
            value=publication.value,
            key=publication.key,
            headers=publication.headers,
        )

    def _screen(self, record: Any, ahead: dict[str, Envelope]) -> _Work | list[_Publication]:
        """The command ``record`` holds, ready to run; or its dead letter when it is none."""
        try:
            envelope = decode_envelope(record.value)
        except MalformedMessageError as exc:
            return [self._dead_letter(record, exc, DeadLetterReason.MALFORMED)]
        if envelope.kind is not MessageKind.COMMAND:
            error = ContractError(f"expected a command, got a {envelope.kind.value} envelope")
            return [self._dead_letter(record, error, DeadLetterReason.SCHEMA)]
        if not envelope.command_id:
            return [
                self._dead_letter(
                    record, ContractError("command without command_id"), DeadLetterReason.SCHEMA
                )
            ]
        # A reply to anything but a legal topic name could never be published.
        if envelope.reply_to and not TOPIC_NAME.fullmatch(envelope.reply_to):
            error = ContractError(f"reply_to {envelope.reply_to!r} is not a valid topic name")
            return [self._dead_letter(record, error, DeadLetterReason.SCHEMA)]
        if (undo_error := fencing.contract_error(envelope)) is not None:
            return [self._dead_letter(record, ContractError(undo_error), DeadLetterReason.SCHEMA)]
        try:
            command = self.service.parse(envelope)
        except UnknownMessageTypeError as exc:
            return [self._dead_letter(record, exc, DeadLetterReason.UNKNOWN_TYPE)]
        except ValidationError as exc:
            return [self._dead_letter(record, exc, DeadLetterReason.SCHEMA)]
        return _Work(envelope, command, fencing.fenced_by(ahead, envelope))

    async def _execute_with_retries(
        self, record: Any, work: _Work, failed_once: Exception | None = None
    ) -> list[_Publication]:
        """Run ``work`` in its own transaction until it succeeds or its attempts are spent
        (then dead-letter it); ``failed_once`` is a first attempt that failed already."""
        envelope, command, undo = work.envelope, work.command, work.undo
        extra = log_extra(envelope)
        done = 0 if failed_once is None else 1

        def failed(attempt: int, error: Exception) -> None:
            # Logged every time: each line is about one command, not about a failing loop.
            self._observer.handler_failed(envelope.message_type, attempt)
            logger.warning(
                "%s failed (attempt %d of %d): %r",
                envelope.message_type,
                attempt,
                self._handler_attempts,
                error,
                extra=extra,
            )

        def on_retry(event: RetryEvent) -> None:
            failed(done + event.attempt, event.error)

        try:
            if failed_once is not None:
                if self._handler_attempts == 1:
                    raise failed_once
                failed(1, failed_once)
                await asyncio.sleep(self._handler_retries.backoff_s(1))
            return await call_with_retries(
                lambda: self._execute_while_the_database_is_away(envelope, command, undo),
                replace(self._handler_retries, max_attempts=self._handler_attempts - done),
                retry_on=lambda exc: not isinstance(exc, _StoppingError),
                on_retry=on_retry,
            )
        except _StoppingError:
            raise
        except Exception as exc:
            # Every other error is retried: this is the last of the attempts.
            attempts = self._handler_attempts
            self._observer.handler_failed(envelope.message_type, attempts)
            logger.error(
                "%s failed %d time(s); dead-lettering it",
                envelope.message_type,
                attempts,
                exc_info=exc,
                extra=extra,
            )
            return [self._dead_letter(record, exc, DeadLetterReason.HANDLER_ERROR)]

    async def _execute_while_the_database_is_away(
        self, envelope: Envelope, command: Command, undo: Envelope | None
    ) -> list[_Publication]:
        """One handler attempt: its transaction is run again, without counting as an attempt,
        for as long as it fails because the database is away (restarting, say)."""
        try:
            publications = await call_with_retries(
                lambda: self._execute(envelope, command, undo),
                self._connect_retries,
                retry_on=is_transient_database_error,
                on_retry=self._progress.on_retry("database", self._database_log),
                stop=self._stopping,
            )
        except Exception as exc:
            if self._stopping.is_set() and is_transient_database_error(exc):
                raise _StoppingError from exc
            raise
        self._progress.recovered("database")
        return publications

    async def _execute(
        self, envelope: Envelope, command: Command, undo: Envelope | None
    ) -> list[_Publication]:
        """One command in one transaction; ``undo`` is a later undo of it in the same batch."""
        command_id = envelope.command_id
        assert command_id is not None  # checked by _screen
        conn = await self._connect()
        started = time.monotonic()
        try:
            async with conn.begin():
                answer = await self._processor.answer(conn, envelope, command, undo)
                screened = await self._screen_reply(conn, envelope, answer)
        except BaseException as exc:
            await self._discard_if_broken(conn, exc)
            raise
        finally:
            await conn.close()
        return self._answered(envelope, answer, screened, started)

    async def _screen_reply(
        self, conn: AsyncConnection, envelope: Envelope, answer: Answer
    ) -> Screened | None:
        """Before the commit: a reply Kafka would never take is recorded as its stand-in, so a
        redelivered command gets the same answer. None when there is no reply."""
        if answer.reply is None:
            return None
        return await self._undeliverable.screen(conn, envelope, answer.reply)

    def _answered(
        self, envelope: Envelope, answer: Answer, screened: Screened | None, started: float
    ) -> list[_Publication]:
        """After the commit of ``answer``: observe it and build its reply's publications."""
        self._observe(envelope, answer.result, started)
        if screened is None:
            return []
        assert envelope.command_id is not None
        self._pickups.answered(envelope.command_id)
        return self._publications(screened, envelope)

    async def _connect(self) -> AsyncConnection:
        """A connection; while the database is unreachable, wait (this is not the command's
        fault, so it does not count as a handler attempt) until it is back or we stop."""
        try:
            conn = await call_with_retries(
                self._open_connection,
                self._connect_retries,
                on_retry=self._progress.on_retry("database connection", self._connect_log),
                stop=self._stopping,
            )
        except Exception as exc:
            if self._stopping.is_set():
                raise _StoppingError from exc
            raise  # not reached: every failure is retried until stop
        self._progress.recovered("database connection")
        return conn

    async def _open_connection(self) -> AsyncConnection:
        conn = self._engine.connect()
        await conn.start()
        return conn

    @staticmethod
    async def _discard_if_broken(conn: AsyncConnection, exc: BaseException) -> None:
        """Keep a connection that failed for a transient reason, or was interrupted, out of
        the pool: asyncpg leaves one busy after an interrupted operation, and the next user
        would fail with "another operation is in progress"."""
        if isinstance(exc, asyncio.CancelledError) or is_transient_database_error(exc):
            with contextlib.suppress(Exception):
                await conn.invalidate()

    def _observe(self, envelope: Envelope, result: str, started: float) -> None:
        self._observer.command_processed(envelope.message_type, result, time.monotonic() - started)

    def _publications(self, screened: Screened, command: Envelope) -> list[_Publication]:
        """A reply's publication, after the dead letter of the reply it stands in for."""
        letter = screened.dead_letter
        if letter is None:
            return [
                _Publication(
                    screened.topic,
                    screened.key,
                    screened.value,
                    screened.headers,
                    answering=command,
                    reply=screened.reply,
                )
            ]
        # Counted against the commands topic, like the runner's other dead letters.
        self._observer.dead_lettered(self.topic, DeadLetterReason.UNSENDABLE)
        return [
            _Publication(letter.topic, letter.key, letter.value, letter.headers, dead_letter=True),
            _Publication(screened.topic, screened.key, screened.value, screened.headers),
        ]

    def _dead_letter(
        self, record: Any, exc: BaseException, reason: DeadLetterReason
    ) -> _Publication:
        letter = DeadLetterRecord.from_consumer_record(
            record, group=self.group_id, exc=exc, reason=reason
        )
        logger.warning(
            "dead-lettering %s[%d]@%d to %s (%s): %s",
            record.topic,
            record.partition,
            record.offset,
            letter.topic,
            reason,
            exc,
            extra=_record_extra(record),
        )
        self._observer.dead_lettered(record.topic, reason)
        return _Publication(
            topic=letter.topic,
            key=letter.key,
            value=letter.value,
            headers=letter.headers,
            dead_letter=True,
        )
