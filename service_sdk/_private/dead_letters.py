"""Dead-letter records: the original message, as received, plus headers saying why and where.

The headers follow Spring Kafka's ``kafka_dlt-*`` convention (see
:class:`~service_sdk.headers.DeadLetterHeader`). The coordinator dead-letters its own
messages with the same function, so the CLI lists and replays both alike.
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from service_sdk.envelope import new_message_id
from service_sdk.headers import DeadLetterHeader, encode_headers
from service_sdk.topics import Topics

__all__ = ["DeadLetterRecord", "dead_letter_headers"]

# Headers count against the broker's record size limit; a deep stack must not push the dead
# letter itself over it.
_MAX_MESSAGE_CHARS = 2_000
_MAX_STACKTRACE_CHARS = 8_000

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
        The header values; encode them with :func:`~service_sdk.headers.encode_headers`.
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
    headers: list[tuple[str, bytes]]

    @classmethod
    def from_consumer_record(
        cls, record: Any, *, group: str | None, exc: BaseException, reason: str
    ) -> DeadLetterRecord:
        """The dead letter of an aiokafka ``ConsumerRecord``.

        The original headers are kept byte for byte (only earlier dead-letter headers are
        replaced), so a replay publishes exactly what was first received.
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
        original = [
            (str(name), bytes(value))
            for name, value in record.headers or ()
            if name not in _OWN_HEADERS and value is not None
        ]
        return cls(
            topic=Topics.dead_letters(record.topic),
            key=record.key,
            value=record.value,
            headers=original + encode_headers(added),
        )
