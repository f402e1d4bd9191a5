"""Replies Kafka would never take: classified, dead-lettered and replaced by a stand-in
(no I/O: the processed-commands store is a recording fake, the sizes are aiokafka's own)."""

from __future__ import annotations

from typing import Any, ClassVar, cast

import pytest
from aiokafka.errors import (
    InvalidTopicError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RecordTooLargeError,
)
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from sqlalchemy.ext.asyncio import AsyncConnection

from service_sdk import Command, Envelope, Outcome, Topics
from service_sdk._private.idempotency import ProcessedCommands
from service_sdk._private.undeliverable import UndeliverableReplies, reply_fault
from service_sdk.contract import (
    UNDELIVERABLE_KEY,
    DeadLetterHeader,
    decode_headers,
    encode_headers,
    undeliverable_reason,
)
from service_sdk.service import reply_envelope
from service_sdk.testing import command_envelope
from service_sdk.transient import is_transient, is_unsendable

LIMIT = 10_000


class Fetch(Command):
    message_type: ClassVar[str] = "archive.fetch"


class _RecordingStore(ProcessedCommands):
    def __init__(self) -> None:
        super().__init__("archive")
        self.replaced: list[tuple[str, Envelope]] = []

    async def update_reply(self, conn: AsyncConnection, command_id: str, reply: Envelope) -> None:
        self.replaced.append((command_id, reply))


def _command(reply_to: str | None = None) -> Envelope:
    return command_envelope(
        Fetch(), saga_id="s-1", step="fetch", command_id="c-1", reply_to=reply_to
    )


def _reply(payload: dict[str, Any], outcome: Outcome = Outcome.SUCCESS) -> Envelope:
    error = None if outcome is Outcome.SUCCESS else "no " * 2_000
    return reply_envelope(_command(), "archive", outcome, payload=payload, error=error)


def _size(envelope: Envelope) -> int:
    return DefaultRecordBatchBuilder.estimate_size_in_bytes(
        envelope.key(), envelope.to_bytes(), encode_headers(envelope.headers())
    )


async def _screen(reply: Envelope, command: Envelope | None = None) -> tuple[Any, _RecordingStore]:
    store = _RecordingStore()
    guard = UndeliverableReplies(store, Topics("t."), "archive-service", LIMIT)
    screened = await guard.screen(cast(AsyncConnection, None), command or _command(), reply)
    return screened, store


@pytest.mark.parametrize(
    "error",
    [
        MessageSizeTooLargeError("too large"),
        RecordTooLargeError("too large for the broker"),
        InvalidTopicError("bad topic"),
    ],
)
def test_kafkas_refusals_for_good_are_unsendable_and_not_transient(error: Exception) -> None:
    assert is_unsendable(error)
    assert not is_transient(error)
    wrapped = RuntimeError("send failed")
    wrapped.__cause__ = error
    assert is_unsendable(wrapped)


def test_a_timeout_is_transient_not_unsendable() -> None:
    assert is_transient(KafkaTimeoutError())
    assert not is_unsendable(KafkaTimeoutError())


def test_the_fault_is_found_at_aiokafkas_own_size_limit() -> None:
    small = _reply({"blob": "x" * 100})
    key, headers = small.key(), encode_headers(small.headers())
    assert reply_fault(key, small.to_bytes(), headers, "t.saga.replies", _size(small)) is None
    fault = reply_fault(key, small.to_bytes(), headers, "t.saga.replies", _size(small) - 1)
    assert isinstance(fault, MessageSizeTooLargeError)
    invalid = reply_fault(key, small.to_bytes(), headers, "no/such topic", LIMIT)
    assert isinstance(invalid, InvalidTopicError)


async def test_a_reply_that_fits_is_published_as_it_is() -> None:
    reply = _reply({"blob": "x" * 100})
    screened, store = await _screen(reply)
    assert (screened.reply, screened.topic, screened.dead_letter) == (reply, "t.saga.replies", None)
    assert screened.value == reply.to_bytes()
    assert store.replaced == []


async def test_an_oversized_success_is_dead_lettered_and_answered_by_a_small_stand_in() -> None:
    reply = _reply({"blob": "x" * 50_000})
    screened, store = await _screen(reply)

    stand_in = screened.reply
    assert (stand_in.message_id, stand_in.outcome, stand_in.command_id) == (
        reply.message_id,
        Outcome.SUCCESS,
        "c-1",
    )
    assert list(stand_in.payload) == [UNDELIVERABLE_KEY]
    reason = undeliverable_reason(stand_in.payload)
    assert reason is not None
    assert "MessageSizeTooLargeError: the reply is " in reason
    marker = stand_in.payload[UNDELIVERABLE_KEY]
    assert marker["bytes"] == len(reply.to_bytes())
    assert _size(stand_in) < 2_000
    # The record answers a redelivered command with the stand-in.
    assert store.replaced == [("c-1", stand_in)]

    letter = screened.dead_letter
    assert letter.topic == "t.saga.replies.dlq"
    assert letter.value is None
    headers = decode_headers(letter.headers)
    assert headers[DeadLetterHeader.REASON] == "unsendable"
    assert headers[DeadLetterHeader.VALUE_DROPPED] == str(len(reply.to_bytes()))
    assert headers[DeadLetterHeader.DEAD_LETTER_ID] == marker["dead_letter_id"]
    assert headers[DeadLetterHeader.ORIGINAL_TOPIC] == "t.saga.replies"
    assert headers["ce_sagacommandid"] == "c-1"
    assert (
        DefaultRecordBatchBuilder.estimate_size_in_bytes(letter.key, letter.value, letter.headers)
        <= LIMIT
    )


async def test_an_oversized_failure_keeps_its_outcome_and_a_cut_error() -> None:
    reply = _reply({"detail": "y" * 50_000}, Outcome.FAILURE)
    screened, _ = await _screen(reply)
    assert screened.reply.outcome is Outcome.FAILURE
    assert screened.reply.error == reply.error[:1_000]
    assert undeliverable_reason(screened.reply.payload) is not None


async def test_a_reply_to_an_invalid_topic_goes_to_the_replies_topic_with_its_body_kept() -> None:
    # The runner refuses such a reply_to before running the handler; this is the last line.
    command = _command().model_copy(update={"reply_to": "no/such topic"})
    reply = _reply({"ok": True})
    screened, store = await _screen(reply, command)
    assert screened.topic == "t.saga.replies"
    letter = screened.dead_letter
    assert letter.topic == "t.saga.replies.dlq"
    assert letter.value == reply.to_bytes()
    assert "InvalidTopicError" in decode_headers(letter.headers)[DeadLetterHeader.EXCEPTION_FQCN]
    assert store.replaced == [("c-1", screened.reply)]
