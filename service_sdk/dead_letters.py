"""Dead-letter records: the original message, as received, plus headers saying why and where.

The headers follow Spring Kafka's ``kafka_dlt-*`` convention (see
:class:`~service_sdk.contract.headers.DeadLetterHeader`). The coordinator dead-letters its own
messages with the same function, so the CLI lists and replays both alike.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka.record.default_records import DefaultRecordBatchBuilder

from service_sdk.contract.envelope import new_message_id
from service_sdk.contract.headers import DeadLetterHeader, encode_headers
from service_sdk.contract.topics import Topics

__all__ = ["MAX_RECORD_BYTES", "DeadLetterRecord", "dead_letter_headers"]

logger = logging.getLogger(__name__)

# Headers count against the broker's record size limit; a deep stack must not push the dead
# letter itself over it.
_MAX_MESSAGE_CHARS = 2_000
_MAX_STACKTRACE_CHARS = 8_000
# What is left of the exception message when a dead letter must shrink to fit.
_SHORT_MESSAGE_CHARS = 200

MAX_RECORD_BYTES = 1_048_576
"""Kafka's default ``max.request.size``, which aiokafka checks before sending: an original
record near it grows past it with the dead-letter headers, and a dead letter that cannot be
sent would stop the consumer that publishes it."""

_OWN_HEADERS = frozenset(
    {
        DeadLetterHeader.ORIGINAL_TOPIC,
        DeadLetterHeader.ORIGINAL_PARTITION,
        DeadLetterHeader.ORIGINAL_OFFSET,
        DeadLetterHeader.ORIGINAL_TIMESTAMP,
        DeadLetterHeader.ORIGINAL_CONSUMER_GROUP,
        DeadLetterHeader.EXCEPTION_FQCN,
        DeadLetterHeader.EXCEPTION_MESSAGE,
        DeadLetterHeader.EXCEPTION_STACKTRACE,
        DeadLetterHeader.REASON,
        DeadLetterHeader.DEAD_LETTER_ID,
        DeadLetterHeader.VALUE_DROPPED,
    }
)


def _truncate(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: limit - 15] + "...[truncated]"


def dead_letter_headers(
    original_headers: Mapping[str, str],
    topic: str,
    partition: int,
    offset: int,
    timestamp: int | None,
    group: str | None,
    exc: BaseException,
    reason: str,
) -> dict[str, str]:
    """The headers of a dead letter: the original ones plus where it came from and why.

    Dead-letter headers the original already carried (a replayed message that failed
    again) are replaced; ``saga_dlt-replay-count`` is kept, the replay tool counts it.

    Args:
        original_headers: The original record's headers, decoded.
        topic: The topic the record was consumed from.
        partition: Its partition.
        offset: Its offset.
        timestamp: Its timestamp in epoch milliseconds, if the record had one.
        group: The consumer group that gave up on it, if any.
        exc: The error that made it a dead letter.
        reason: A short machine-readable reason, e.g. ``malformed``, ``unknown_type``,
            ``schema``, ``handler_error``.

    Returns:
        The header values; encode them with :func:`~service_sdk.contract.headers.encode_headers`.
    """
    headers = {name: value for name, value in original_headers.items() if name not in _OWN_HEADERS}
    headers[DeadLetterHeader.DEAD_LETTER_ID] = new_message_id()
    headers[DeadLetterHeader.REASON] = reason
    headers[DeadLetterHeader.ORIGINAL_TOPIC] = topic
    headers[DeadLetterHeader.ORIGINAL_PARTITION] = str(partition)
    headers[DeadLetterHeader.ORIGINAL_OFFSET] = str(offset)
    if timestamp is not None:
        headers[DeadLetterHeader.ORIGINAL_TIMESTAMP] = str(timestamp)
    if group is not None:
        headers[DeadLetterHeader.ORIGINAL_CONSUMER_GROUP] = group
    error_type = type(exc)
    headers[DeadLetterHeader.EXCEPTION_FQCN] = f"{error_type.__module__}.{error_type.__qualname__}"
    headers[DeadLetterHeader.EXCEPTION_MESSAGE] = _truncate(str(exc), _MAX_MESSAGE_CHARS)
    if exc.__traceback__ is not None:
        stack = "".join(traceback.format_exception(exc))
        headers[DeadLetterHeader.EXCEPTION_STACKTRACE] = _truncate(stack, _MAX_STACKTRACE_CHARS)
    return headers


@dataclass(frozen=True)
class DeadLetterRecord:
    """A record to publish to a dead-letter topic: original key and bytes, new headers.

    Attributes:
        topic: ``<original topic>.dlq``.
        key: The original key, unchanged.
        value: The original body, unchanged (even when it is not valid UTF-8 or JSON).
        headers: Kafka headers as ``(name, bytes)`` pairs.
    """

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]

    @classmethod
    def from_consumer_record(
        cls,
        record: Any,
        *,
        group: str | None,
        exc: BaseException,
        reason: str,
        max_bytes: int = MAX_RECORD_BYTES,
        drop_value: bool = False,
    ) -> DeadLetterRecord:
        """The dead letter of an aiokafka ``ConsumerRecord``.

        The original headers are kept byte for byte (only earlier dead-letter headers are
        replaced), so a replay publishes exactly what was first received. A dead letter that
        would be larger than ``max_bytes`` sheds the stack trace, then most of the exception
        message, and as a last resort the body (``saga_dlt-value-dropped`` gives its size).
        ``drop_value`` drops the body from the start: a record Kafka refused for its size.
        """
        added = dead_letter_headers(
            {},
            record.topic,
            record.partition,
            record.offset,
            record.timestamp,
            group,
            exc,
            reason,
        )
        # Header values may be null in Kafka; they are kept as they came.
        original: list[tuple[str, bytes | None]] = [
            (str(name), None if value is None else bytes(value))
            for name, value in record.headers or ()
            if name not in _OWN_HEADERS
        ]
        value: bytes | None = record.value
        if value is None and record.key is None:
            # Kafka allows a record with neither key nor value, but aiokafka refuses to send
            # one; an empty body is the same to every consumer of a dead letter.
            value = b""
        if drop_value and value:
            added[DeadLetterHeader.VALUE_DROPPED] = str(len(value))
            value = None
        headers = [*original, *encode_headers(added)]
        # Shed what matters least first; the body goes only when nothing else makes it fit.
        for shed in ("stacktrace", "message", "value"):
            if DefaultRecordBatchBuilder.estimate_size_in_bytes(record.key, value, headers) <= (
                max_bytes
            ):
                break
            if shed == "stacktrace":
                added.pop(DeadLetterHeader.EXCEPTION_STACKTRACE, None)
            elif shed == "message":
                message = added[DeadLetterHeader.EXCEPTION_MESSAGE]
                added[DeadLetterHeader.EXCEPTION_MESSAGE] = _truncate(message, _SHORT_MESSAGE_CHARS)
            elif value is not None:
                logger.error(
                    "dead letter of %s[%d]@%d too large even without its stack trace; "
                    "dropping its %d-byte body (it stays at that offset)",
                    record.topic,
                    record.partition,
                    record.offset,
                    len(value),
                )
                added[DeadLetterHeader.VALUE_DROPPED] = str(len(value))
                value = None
            headers = [*original, *encode_headers(added)]
        return cls(
            topic=Topics.dead_letters(record.topic), key=record.key, value=value, headers=headers
        )
