"""Replies Kafka would never take: dead-lettered, and answered by a small stand-in.

A reply larger than the producer's ``max_request_size`` (or bound for an invalid topic) fails
on every send; retried, it would hold up its runner's batch for good. Instead, inside the
command's transaction, before anything is committed (or, when the broker refuses a reply that
passed this check, e.g. over the topic's ``max.message.bytes``, in a transaction of its own):

1. the reply becomes a dead letter on ``<replies topic>.dlq`` (reason ``unsendable``) with its
   headers and, for a size refusal, without its body (``saga_dlt-value-dropped`` gives the
   size), so the dead letter itself fits;
2. the command is answered by a stand-in: the same outcome, message id and routing facts, and
   a payload holding only the marker of :mod:`service_sdk.contract.undeliverable`. A SUCCESS
   stand-in tells the coordinator that the effect happened but its result cannot be
   delivered: it compensates that step with the ones before it;
3. the stand-in replaces the recorded reply, so a redelivered command gets the same answer.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka.errors import InvalidTopicError, MessageSizeTooLargeError
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from sqlalchemy.ext.asyncio import AsyncConnection

from service_sdk._private.idempotency import ProcessedCommands
from service_sdk.contract.envelope import Envelope
from service_sdk.contract.headers import DeadLetterHeader, encode_headers
from service_sdk.contract.reasons import DeadLetterReason
from service_sdk.contract.topics import Topics
from service_sdk.contract.undeliverable import undeliverable_payload
from service_sdk.dead_letters import DeadLetterRecord
from service_sdk.transient import error_chain

__all__ = [
    "TOPIC_NAME",
    "Screened",
    "UndeliverableReplies",
    "is_invalid_topic",
    "reply_fault",
    "without_body",
]

logger = logging.getLogger(__name__)

TOPIC_NAME = re.compile(r"(?!\.{1,2}$)[A-Za-z0-9._-]{1,249}")
"""Kafka's legal topic names."""

_MAX_ERROR_CHARS = 1_000


def is_invalid_topic(error: BaseException) -> bool:
    """True when Kafka refused a record for its topic (rather than for its size)."""
    return any(isinstance(node, InvalidTopicError) for node in error_chain(error))


def without_body(
    value: bytes | None, headers: Sequence[tuple[str, bytes | None]]
) -> list[tuple[str, bytes | None]]:
    """The headers of a dead letter whose body (``value``) is dropped: its size stated."""
    kept = [(name, v) for name, v in headers if name != DeadLetterHeader.VALUE_DROPPED]
    return [*kept, (DeadLetterHeader.VALUE_DROPPED, str(len(value or b"")).encode())]


def reply_fault(
    key: bytes, value: bytes, headers: list[tuple[str, bytes]], topic: str, max_bytes: int
) -> Exception | None:
    """The error Kafka would answer every send of this record to ``topic`` with, or None.

    The size is the one aiokafka checks against ``max_request_size`` before sending.
    """
    error: Exception | None = None
    if not TOPIC_NAME.fullmatch(topic):
        error = InvalidTopicError(f"{topic!r} is not a valid topic name")
    else:
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, list(headers))
        if size > max_bytes:
            error = MessageSizeTooLargeError(
                f"the reply is {size} bytes, more than the producer's max_request_size of "
                f"{max_bytes}"
            )
    return error


class _ReplyAsRecord:
    """A reply that was never published, seen as the record a dead letter is made of."""

    partition = -1
    offset = -1

    def __init__(self, screened: Screened) -> None:
        self.topic = screened.topic
        self.timestamp = int(screened.reply.occurred_at.timestamp() * 1000)
        self.key = screened.key
        self.value = screened.value
        self.headers = screened.headers


@dataclass(frozen=True)
class Screened:
    """A reply as it is published.

    Attributes:
        reply: The reply, or its stand-in.
        topic: Where it goes.
        key: Its record key.
        value: Its record body.
        headers: Its record headers.
        dead_letter: The dead letter of the reply it stands in for; None for a real reply.
    """

    reply: Envelope
    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    dead_letter: DeadLetterRecord | None = None

    @classmethod
    def of(
        cls, reply: Envelope, topic: str, dead_letter: DeadLetterRecord | None = None
    ) -> Screened:
        """``reply`` as a record to ``topic``."""
        return cls(
            reply,
            topic,
            reply.key(),
            reply.to_bytes(),
            encode_headers(reply.headers()),
            dead_letter,
        )


class UndeliverableReplies:
    """Screens replies before their command's transaction commits.

    Args:
        store: The processed-commands record, whose reply the stand-in replaces.
        topics: Topic naming (the replies topic is the fallback for an invalid ``reply_to``).
        group: The runner's consumer group (in the dead letter's headers).
        max_bytes: The producer's ``max_request_size``.
    """

    def __init__(
        self, store: ProcessedCommands, topics: Topics, group: str, max_bytes: int
    ) -> None:
        self._store = store
        self._topics = topics
        self._group = group
        self._max_bytes = max_bytes

    async def screen(self, conn: AsyncConnection, command: Envelope, reply: Envelope) -> Screened:
        """The reply to publish for ``command``: ``reply``, or a stand-in recorded in its place.

        Args:
            conn: In the command's transaction.
            command: The command answered (its ``reply_to`` says where the reply goes).
            reply: Its answer, recorded already (or not at all, for a retryable one).
        """
        screened = Screened.of(reply, command.reply_to or self._topics.replies)
        error = reply_fault(
            screened.key, screened.value, screened.headers, screened.topic, self._max_bytes
        )
        if error is None:
            return screened
        return await self.set_aside(conn, command, reply, error)

    async def set_aside(
        self, conn: AsyncConnection, command: Envelope, reply: Envelope, error: BaseException
    ) -> Screened:
        """Dead-letter ``reply``, which Kafka refused for good with ``error``, and record its
        stand-in as the answer to ``command``; returns the stand-in to publish.

        Args:
            conn: In a transaction (the command's, or one of its own after a refused send).
            command: The command answered.
            reply: Its refused answer.
            error: Kafka's refusal (:func:`~service_sdk.transient.is_unsendable`).
        """
        topic = command.reply_to or self._topics.replies
        if is_invalid_topic(error) or not TOPIC_NAME.fullmatch(topic):
            topic = self._topics.replies
        screened = Screened.of(reply, topic)
        size = len(screened.value)
        letter = DeadLetterRecord.from_consumer_record(
            _ReplyAsRecord(screened),
            group=self._group,
            exc=error,
            reason=DeadLetterReason.UNSENDABLE,
            max_bytes=self._max_bytes,
            # A refusal for its size: the body would not fit in the dead letter either.
            drop_value=not is_invalid_topic(error),
        )
        letter_id = dict(letter.headers).get(DeadLetterHeader.DEAD_LETTER_ID)
        reason = str(error)  # aiokafka's errors say their name: "[Error 10] MessageSizeTooLarge..."
        stand_in = reply.model_copy(
            update={
                "payload": undeliverable_payload(
                    reason,
                    size=size,
                    dead_letter_id=letter_id.decode() if letter_id is not None else None,
                ),
                "error": None if reply.error is None else reply.error[:_MAX_ERROR_CHARS],
            }
        )
        assert command.command_id is not None  # a command the runner answers has one
        await self._store.update_reply(conn, command.command_id, stand_in)
        logger.error(
            "the %s reply (%d bytes) can never be sent (%s); dead-lettered to %s, "
            "answered by a stand-in",
            reply.outcome,
            size,
            reason,
            letter.topic,
            extra={
                "saga_id": reply.saga_id,
                "step": reply.step,
                "message_id": reply.message_id,
                "command_id": reply.command_id,
            },
        )
        return Screened.of(stand_in, topic, letter)
