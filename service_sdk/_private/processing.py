"""One command's database transaction: claim, settle, run, record.

:class:`CommandProcessor` decides how one command is answered, inside the transaction the
runner opens for it (the runner owns Kafka, retries and publication):

1. Claim the command id (``INSERT ... ON CONFLICT DO NOTHING``). A command recorded already
   is answered from its record: its reply again (done), nothing (pending: deferred), or its
   refusal (fenced: a tombstone).
2. A command whose undo is later in the same batch (look-ahead) is tombstoned instead of
   claimed, and refused.
3. An undo (``compensates`` set: a compensation or a ``saga.fence``) first settles the
   command it names (see :mod:`service_sdk._private.fencing`); the compensation handler runs
   only when that command took effect here.
4. Otherwise the handler runs in a SAVEPOINT and its reply is recorded with it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from service_sdk._private import fencing
from service_sdk._private.heartbeats import PickupLog
from service_sdk._private.idempotency import CommandStatus, ProcessedCommands
from service_sdk._private.tracing import handler_span
from service_sdk.contract.envelope import FENCE_MESSAGE_TYPE, Command, Envelope, Outcome
from service_sdk.errors import CommandFencedError
from service_sdk.service import Deferred, Service, reply_envelope

__all__ = ["Answer", "BatchHandlerError", "CommandProcessor", "log_extra"]

logger = logging.getLogger(__name__)


def log_extra(envelope: Envelope) -> dict[str, Any]:
    """The saga coordinates a log line about ``envelope`` carries (see coordinator.observability.logs)."""
    return {
        "saga_id": envelope.saga_id,
        "saga_type": envelope.saga_type,
        "step": envelope.step,
        "message_id": envelope.message_id,
        "command_id": envelope.command_id,
        "attempt": envelope.attempt,
    }


class BatchHandlerError(Exception):
    """A batch handler failed: which of its commands made it fail is not known.

    The runner then answers the batch again with a savepoint per command, so the failing
    command is found and fails alone.
    """

    def __init__(self, cause: Exception) -> None:
        super().__init__(f"batch handler failed: {cause!r}")
        self.cause = cause


@dataclass(frozen=True)
class Answer:
    """What one command's transaction decided.

    Attributes:
        reply: The reply to publish; None when there is none now (deferred or pending).
        result: What the runner's observer is told (see ``RunnerObserver.command_processed``).
    """

    reply: Envelope | None
    result: str


class CommandProcessor:
    """Answers commands of one service against its processed-commands record.

    Args:
        service: The service and its handlers.
        store: Its processed-commands table.
        pickups: Told when a handler starts (for heartbeats).
        topic: The commands topic (for the handler's trace span).
    """

    def __init__(
        self, service: Service, store: ProcessedCommands, pickups: PickupLog, topic: str
    ) -> None:
        self.service = service
        self._store = store
        self._pickups = pickups
        self._topic = topic

    async def answer(
        self, conn: AsyncConnection, envelope: Envelope, command: Command, undo: Envelope | None
    ) -> Answer:
        """Answer one command inside the caller's transaction on ``conn``.

        Args:
            conn: In a transaction; committed by the caller.
            envelope: The command as received (with a command id).
            command: Its parsed payload.
            undo: An undo naming this command later in the same batch (look-ahead).

        Raises:
            Exception: Whatever the handler raised other than ``CommandRejected``; the caller
                rolls the transaction back and retries or dead-letters the command.
        """
        command_id = envelope.command_id
        assert command_id is not None
        if undo is not None:
            # Its undo is queued behind it: tombstone it, unless it is recorded already.
            assert undo.command_id is not None
            refused = fencing.refusal(envelope, self.service.name, undo.command_id)
            if await self._store.insert_tombstone(conn, command_id, envelope, refused):
                logger.info(
                    "command fenced by undo %s later in its batch; refused",
                    undo.command_id,
                    extra=log_extra(envelope),
                )
                return Answer(refused, "fenced")
            return await self._recorded(conn, envelope)
        if not await self._store.insert_claim(conn, envelope):
            return await self._recorded(conn, envelope)
        if envelope.compensates is not None:
            settled = await self._settle_undone(conn, envelope)
            if settled is not None:
                reply = reply_envelope(
                    envelope, self.service.name, Outcome.SUCCESS, payload=settled.payload
                )
                await self._store.update_done(conn, command_id, reply)
                return Answer(reply, settled.result)
        self._pickups.started(envelope)
        with handler_span(envelope, self._topic, self.service.name):
            result = await self.service.dispatch(envelope, command, conn)
        if isinstance(result, Deferred):
            return Answer(None, "deferred")
        await self.record(conn, command_id, result)
        assert result.outcome is not None
        return Answer(result, result.outcome.value)

    async def answer_batch(
        self,
        conn: AsyncConnection,
        items: Sequence[tuple[Envelope, Command, Envelope | None]],
        *,
        budget_s: float | None = None,
        isolated: bool = True,
    ) -> tuple[list[Answer], tuple[int, Exception] | None, int | None]:
        """Answer commands in order inside the caller's transaction on ``conn``, with as few
        statements as it takes: the plain ones (no undo, their id once in the batch) are
        claimed together up front and their replies recorded together at the end; the rest
        go through :meth:`answer`, each in a SAVEPOINT.

        Args:
            budget_s: Once the commands answered so far took this long, the rest are left for
                another transaction: a reply waits for the commit of its whole transaction, and
                a step's timeout runs from the pickup of its command.
            isolated: Run each claimed command's handler in a SAVEPOINT, so that a failure
                undoes only its own writes. Without (two round trips fewer per command), a
                failure (a rejection included) leaves writes that only rolling back the whole
                transaction undoes: the answers are then not recorded, and the caller must
                roll back.

        Returns:
            The answers of the commands before the first that failed, and that one's index
            and error (None when none failed); and the index of the first command left for
            later because the budget ran out (None when none was). Nothing of a command not
            answered stays in the transaction: the caller commits the answers and answers the
            failed command alone.

        Raises:
            Exception: The transaction itself failed (the database went away, say); the
                caller rolls it back.
        """
        counts = Counter(envelope.command_id for envelope, _, _ in items)
        plain = [
            envelope
            for envelope, _, undo in items
            if undo is None and envelope.compensates is None and counts[envelope.command_id] == 1
        ]
        claimed = await self._store.insert_claims(conn, plain)
        answers: list[Answer] = []
        done: list[tuple[str, Envelope]] = []
        forget: list[str] = []
        failure: tuple[int, Exception] | None = None
        stopped: int | None = None
        started = time.monotonic()
        index = 0
        while index < len(items):
            envelope, command, undo = items[index]
            if answers and budget_s is not None and time.monotonic() - started >= budget_s:
                stopped = index
                forget.extend(
                    e.command_id or "" for e, _, _ in items[index:] if e.command_id in claimed
                )
                break
            # Savepoints answer one command at a time; without, a batch handler takes its run.
            end = index if isolated else self._batch_end(items, index, claimed)
            try:
                if end > index:
                    group = await self._run_many(conn, items[index:end])
                elif envelope.command_id in claimed:
                    # Any error of dispatch comes after its savepoint was rolled back.
                    group = [await self._run(envelope, command, conn, isolated=isolated)]
                else:
                    async with conn.begin_nested():
                        group = [await self.answer(conn, envelope, command, undo)]
            except Exception as exc:
                failure = (index, BatchHandlerError(exc) if end > index + 1 else exc)
                if not isolated:
                    return answers, failure, None  # the caller rolls everything back
                # Claimed and not answered: the failed command and those after it.
                forget.extend(
                    e.command_id or "" for e, _, _ in items[index:] if e.command_id in claimed
                )
                break
            for (answered, _, _), answer in zip(items[index:], group, strict=False):
                command_id = answered.command_id or ""
                if command_id in claimed and answer.reply is not None:
                    if answer.reply.outcome is Outcome.RETRYABLE:
                        forget.append(command_id)
                    else:
                        done.append((command_id, answer.reply))
                answers.append(answer)
            index += len(group)
        await self._store.update_done_many(conn, done)
        await self._store.delete_many(conn, forget)
        return answers, failure, stopped

    def _batch_end(
        self,
        items: Sequence[tuple[Envelope, Command, Envelope | None]],
        start: int,
        claimed: set[str],
    ) -> int:
        """The end of the run of claimed commands from ``start`` that one batch handler
        answers together (all of one type); ``start`` when that command has none."""
        first = items[start][0]
        if first.command_id not in claimed or not self.service.batched(first.message_type):
            return start
        end = start + 1
        while end < len(items) and (
            items[end][0].message_type == first.message_type and items[end][0].command_id in claimed
        ):
            end += 1
        return end

    async def _run_many(
        self, conn: AsyncConnection, items: Sequence[tuple[Envelope, Command, Envelope | None]]
    ) -> list[Answer]:
        """Run the batch handler of claimed commands of one type; their replies are for the
        caller to record."""
        envelopes = [envelope for envelope, _, _ in items]
        with contextlib.ExitStack() as spans:
            for envelope in envelopes:
                self._pickups.started(envelope)
                spans.enter_context(handler_span(envelope, self._topic, self.service.name))
            results = await self.service.dispatch_many(
                envelopes, [command for _, command, _ in items], conn
            )
        return [
            Answer(None, "deferred")
            if isinstance(result, Deferred)
            else Answer(result, (result.outcome or Outcome.SUCCESS).value)
            for result in results
        ]

    async def _run(
        self, envelope: Envelope, command: Command, conn: AsyncConnection, *, isolated: bool
    ) -> Answer:
        """Run the handler of a claimed command; its reply is for the caller to record."""
        self._pickups.started(envelope)
        with handler_span(envelope, self._topic, self.service.name):
            result = await self.service.dispatch(envelope, command, conn, isolated=isolated)
        if isinstance(result, Deferred):
            return Answer(None, "deferred")
        assert result.outcome is not None
        return Answer(result, result.outcome.value)

    async def finish_later(
        self, conn: AsyncConnection, command_id: str, build: Callable[[Envelope], Envelope]
    ) -> tuple[Envelope, Envelope]:
        """Answer a deferred command with ``build(command)``, or find its recorded reply.

        Returns:
            The reply and the command's envelope.

        Raises:
            LookupError: No deferred or answered command has this id.
            CommandFencedError: It was fenced while deferred.
        """
        row = await self._store.select_for_update(conn, command_id)
        if row is None:
            raise LookupError(f"{self.service.name}: no deferred command {command_id!r}")
        if row.status is CommandStatus.FENCED:
            raise CommandFencedError(command_id)
        if row.status is CommandStatus.DONE and row.reply is not None:
            return row.reply, row.command
        reply = build(row.command)
        await self.record(conn, command_id, reply)
        return reply, row.command

    async def record(self, conn: AsyncConnection, command_id: str, reply: Envelope) -> None:
        """Record a claimed or deferred command's reply (a retryable one forgets it)."""
        if reply.outcome is Outcome.RETRYABLE:
            await self._store.delete(conn, command_id)
        else:
            await self._store.update_done(conn, command_id, reply)

    async def _settle_undone(
        self, conn: AsyncConnection, undo: Envelope
    ) -> fencing.UndoAnswer | None:
        """Settle the command ``undo`` names; None when the compensation handler must run."""
        target_id = undo.compensates
        assert target_id is not None
        assert undo.command_id is not None
        # Tombstone first (ON CONFLICT DO NOTHING): a concurrent claim of the target is
        # waited for, and then its record decides.
        if await self._store.insert_tombstone(conn, target_id, undo, None):
            target = fencing.Target.UNSEEN
        else:
            row = await self._store.select_for_update(conn, target_id)
            if row is None:
                raise RuntimeError(f"record of command {target_id!r} vanished")
            target = fencing.target_of(row)
            if target is fencing.Target.PENDING:
                # Deferred: it must not take effect any more; complete_later now refuses.
                refused = fencing.refusal(row.command, self.service.name, undo.command_id)
                await self._store.update_fenced(conn, target_id, row.command, refused)
                self._pickups.answered(target_id)
        fence = undo.message_type == FENCE_MESSAGE_TYPE
        settled = fencing.decide_undo(fence=fence, target=target)
        logger.info(
            "undo of command %s, which was %s: %s",
            target_id,
            target.value,
            "running the compensation" if settled is None else settled.payload,
            extra=log_extra(undo),
        )
        return settled

    async def _recorded(self, conn: AsyncConnection, envelope: Envelope) -> Answer:
        """The answer to a command that is recorded already."""
        command_id = envelope.command_id
        assert command_id is not None
        extra = log_extra(envelope)
        row = await self._store.select_for_update(conn, command_id)
        if row is None:
            raise RuntimeError(f"record of command {command_id!r} vanished")
        if row.status is CommandStatus.FENCED:
            if row.reply is None:
                # Fenced before it arrived: the tombstone holds the undo; record the refusal.
                undo_id = row.command.command_id or ""
                refused = fencing.refusal(envelope, self.service.name, undo_id)
                await self._store.update_fenced(conn, command_id, envelope, refused)
                logger.info("command arrived after its undo; refused", extra=extra)
                return Answer(refused, "fenced")
            logger.info("fenced command re-delivered; re-publishing its refusal", extra=extra)
            return Answer(row.reply, "fenced")
        if row.status is CommandStatus.PENDING or row.reply is None:
            logger.info("deferred command re-delivered; still pending", extra=extra)
            return Answer(None, "pending")
        logger.info("command re-delivered; re-publishing its reply", extra=extra)
        return Answer(row.reply, "duplicate")
