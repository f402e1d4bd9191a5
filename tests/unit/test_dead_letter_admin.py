"""The pure parts of dead-letter handling: parsing a dead letter, filters, the headers a replay
sends, the size limit of a dead letter, and the garbage the integration tests send."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.structs import ConsumerRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.ops.dead_letter_admin import DeadLetterFilter, StoredDeadLetter, replay_headers
from service_sdk import DeadLetterHeader, Header, MalformedMessageError, decode_envelope
from service_sdk.dead_letters import MAX_RECORD_BYTES, DeadLetterRecord
from tests.garbage import draw, garbage, oracle

AT = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
ORIGINAL_HEADERS: list[tuple[str, bytes | None]] = [
    (Header.ID, b"m-1"),
    (Header.SAGA_ID, b"saga-7"),
    ("x-binary", b"\xff\xfe\x00"),
    ("x-null", None),
]


def _record(
    topic: str,
    *,
    offset: int = 5,
    key: bytes | None = b"saga-7",
    value: bytes | None = b'{"oops"',
    headers: list[tuple[str, bytes | None]] | None = None,
    timestamp: int = int(AT.timestamp() * 1000),
) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic=topic,
        partition=0,
        offset=offset,
        timestamp=timestamp,
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=len(key or b""),
        serialized_value_size=len(value or b""),
        headers=headers if headers is not None else list(ORIGINAL_HEADERS),
    )


def _boom() -> RuntimeError:
    try:
        raise RuntimeError("card processor unreachable")
    except RuntimeError as exc:
        return exc


def _dead_letter_of(
    record: ConsumerRecord[bytes, bytes], *, reason: str = "handler_error", offset: int = 9
) -> StoredDeadLetter:
    """What a consumer dead-letters, as read back from the dead-letter topic."""
    dead = DeadLetterRecord.from_consumer_record(
        record, group="payment-service", exc=_boom(), reason=reason
    )
    return StoredDeadLetter.from_record(
        _record(
            dead.topic,
            offset=offset,
            key=dead.key,
            value=dead.value,
            headers=list(dead.headers),
            timestamp=record.timestamp + 1_000,
        )
    )


# -- a dead letter, as read back -----------------------------------------------------------


def test_dead_letter_reads_where_it_came_from_and_why() -> None:
    letter = _dead_letter_of(_record("p.payment.commands"))

    assert letter.position == ("p.payment.commands.dlq", 0, 9)
    assert letter.reason == "handler_error"
    assert (letter.original_topic, letter.original_partition, letter.original_offset) == (
        "p.payment.commands",
        0,
        5,
    )
    assert letter.original_timestamp == AT
    assert letter.timestamp == AT + timedelta(seconds=1)
    assert letter.saga_id == "saga-7"
    assert letter.replay_count == 0
    assert letter.consumer_group == "payment-service"
    assert letter.exception == "builtins.RuntimeError"
    assert letter.exception_message == "card processor unreachable"
    assert letter.key == b"saga-7"
    assert letter.value == b'{"oops"'
    assert letter.unreplayable_because() is None
    summary = letter.as_dict(full=True)
    assert summary["reason"] == "handler_error"
    assert ["x-null", None] in summary["headers"]


def test_garbled_dead_letter_headers_do_not_break_reading() -> None:
    letter = StoredDeadLetter.from_record(
        _record(
            "t.dlq",
            headers=[
                (DeadLetterHeader.ORIGINAL_PARTITION, b"zero"),
                (DeadLetterHeader.REPLAY_COUNT, b"-4"),
                (DeadLetterHeader.REASON, b"\xff"),
            ],
            timestamp=-1,
        )
    )
    assert letter.original_partition is None
    assert letter.replay_count == 0
    assert letter.reason == "\ufffd"
    assert letter.timestamp is None
    assert letter.unreplayable_because() == "no kafka_dlt-original-topic header"


@pytest.mark.parametrize(
    ("headers", "key", "value", "why"),
    [
        ([(DeadLetterHeader.ORIGINAL_TOPIC, b"other")], b"k", b"v", "is not that of"),
        (
            [(DeadLetterHeader.ORIGINAL_TOPIC, b"t"), (DeadLetterHeader.VALUE_DROPPED, b"9")],
            b"k",
            None,
            "too large",
        ),
        ([(DeadLetterHeader.ORIGINAL_TOPIC, b"t")], None, None, "neither key nor body"),
    ],
)
def test_unreplayable_dead_letters_say_why(
    headers: list[tuple[str, bytes | None]], key: bytes | None, value: bytes | None, why: str
) -> None:
    letter = StoredDeadLetter.from_record(_record("t.dlq", key=key, value=value, headers=headers))
    reason = letter.unreplayable_because()
    assert reason is not None
    assert why in reason


# -- replay headers ------------------------------------------------------------------------


def test_replay_sends_the_original_headers_and_counts() -> None:
    letter = _dead_letter_of(_record("payment.commands"))

    headers = replay_headers(letter)

    assert headers == [*ORIGINAL_HEADERS, (DeadLetterHeader.REPLAY_COUNT, b"1")]


def test_a_replayed_message_that_fails_again_counts_on() -> None:
    first = _dead_letter_of(_record("payment.commands"))
    replayed = _record("payment.commands", offset=77, headers=replay_headers(first))

    second = _dead_letter_of(replayed, reason="schema", offset=10)

    assert second.replay_count == 1
    assert (second.reason, second.original_offset) == ("schema", 77)
    assert [h for h in second.headers if h[0] == DeadLetterHeader.REPLAY_COUNT] == [
        (DeadLetterHeader.REPLAY_COUNT, b"1")
    ]
    assert replay_headers(second) == [*ORIGINAL_HEADERS, (DeadLetterHeader.REPLAY_COUNT, b"2")]


# -- filters -------------------------------------------------------------------------------


def test_filter_matches_every_given_criterion() -> None:
    letter = _dead_letter_of(_record("p.saga.replies"), reason="unknown_saga")
    at = letter.timestamp
    assert at is not None

    assert DeadLetterFilter().matches(letter)
    assert DeadLetterFilter(topic="p.saga.replies").matches(letter)
    assert DeadLetterFilter(topic="p.saga.replies.dlq").matches(letter)
    assert not DeadLetterFilter(topic="p.payment.commands").matches(letter)
    assert DeadLetterFilter(reason="unknown_saga", saga_id="saga-7").matches(letter)
    assert not DeadLetterFilter(reason="malformed").matches(letter)
    assert not DeadLetterFilter(saga_id="saga-8").matches(letter)
    assert DeadLetterFilter(since=at, until=at + timedelta(milliseconds=1)).matches(letter)
    assert not DeadLetterFilter(since=at + timedelta(milliseconds=1)).matches(letter)
    assert not DeadLetterFilter(until=at).matches(letter)  # until is exclusive


def test_filter_names_the_one_dead_letter_topic_to_read() -> None:
    assert DeadLetterFilter().dlq_topic is None
    assert DeadLetterFilter(topic="saga.replies").dlq_topic == "saga.replies.dlq"
    assert DeadLetterFilter(topic="saga.replies.dlq").dlq_topic == "saga.replies.dlq"


def test_filter_times_must_be_timezone_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        DeadLetterFilter(since=datetime(2025, 1, 1))  # noqa: DTZ001


# -- the size of a dead letter -------------------------------------------------------------


def _size(dead: DeadLetterRecord) -> int:
    return int(DefaultRecordBatchBuilder.estimate_size_in_bytes(dead.key, dead.value, dead.headers))


def test_a_dead_letter_near_the_size_limit_sheds_its_stack_trace_first() -> None:
    small = DeadLetterRecord.from_consumer_record(
        _record("t", value=b""), group="g", exc=_boom(), reason="malformed"
    )
    stack = dict(small.headers)[DeadLetterHeader.EXCEPTION_STACKTRACE]
    assert stack is not None
    # Too large with the stack trace, small enough without it.
    body = b"x" * (MAX_RECORD_BYTES - _size(small) + len(stack) // 2)
    dead = DeadLetterRecord.from_consumer_record(
        _record("t", value=body), group="g", exc=_boom(), reason="malformed"
    )
    names = [name for name, _ in dead.headers]
    assert dead.value == body
    assert DeadLetterHeader.EXCEPTION_STACKTRACE not in names
    assert DeadLetterHeader.EXCEPTION_MESSAGE in names
    assert _size(dead) <= MAX_RECORD_BYTES


def test_a_dead_letter_at_the_size_limit_keeps_where_its_body_is() -> None:
    body = b"x" * (MAX_RECORD_BYTES - 200)
    dead = DeadLetterRecord.from_consumer_record(
        _record("t", value=body), group="g", exc=_boom(), reason="malformed"
    )
    letter = StoredDeadLetter.from_record(
        _record("t.dlq", value=dead.value, headers=list(dead.headers))
    )
    assert dead.value is None
    assert letter.header(DeadLetterHeader.VALUE_DROPPED) == str(len(body))
    assert (letter.original_topic, letter.original_offset) == ("t", 5)
    assert _size(dead) <= MAX_RECORD_BYTES
    assert "too large" in (letter.unreplayable_because() or "")


def test_a_small_dead_letter_keeps_everything() -> None:
    dead = DeadLetterRecord.from_consumer_record(
        _record("t"), group="g", exc=_boom(), reason="malformed"
    )
    names = [name for name, _ in dead.headers]
    assert DeadLetterHeader.EXCEPTION_STACKTRACE in names
    assert dead.headers[: len(ORIGINAL_HEADERS)] == ORIGINAL_HEADERS


def test_a_record_without_key_or_value_is_dead_lettered_with_an_empty_body() -> None:
    dead = DeadLetterRecord.from_consumer_record(
        _record("t", key=None, value=None), group="g", exc=_boom(), reason="malformed"
    )
    assert (dead.key, dead.value) == (None, b"")


# -- the garbage ---------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["replies", "commands"])
def test_garbage_is_never_processable_and_carries_the_consumers_reason(target: Any) -> None:
    items = draw(garbage(target), 60, at_seed=11)
    assert len({(i.key, i.value) for i in items}) > 40, "the garbage is not varied"
    for item in items:
        assert oracle(item) == item.reason, item


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=200).map(str.encode))
def test_decoding_any_bytes_raises_only_malformed_message(body: bytes) -> None:
    with contextlib.suppress(MalformedMessageError):
        decode_envelope(body)
