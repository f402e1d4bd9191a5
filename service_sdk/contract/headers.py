"""Kafka header names of the wire contract.

Routing facts travel in headers so a message can be routed and de-duplicated without parsing
its body. Names follow the CloudEvents Kafka protocol binding (``ce_`` prefix, lowercase
extension attributes), W3C trace context (``traceparent``) and, for dead letters, Spring
Kafka's ``kafka_dlt-*`` headers, which most Kafka tooling already shows.
"""

from __future__ import annotations

from typing import Final

__all__ = ["DeadLetterHeader", "Header", "decode_headers", "encode_headers"]


class Header:
    """Headers on every message (commands, replies, start requests, lifecycle events)."""

    ID: Final = "ce_id"
    TYPE: Final = "ce_type"
    SOURCE: Final = "ce_source"
    SPEC_VERSION: Final = "ce_specversion"
    TIME: Final = "ce_time"
    CONTENT_TYPE: Final = "content-type"
    KIND: Final = "ce_sagakind"
    SAGA_ID: Final = "ce_sagaid"
    SAGA_TYPE: Final = "ce_sagatype"
    STEP: Final = "ce_sagastep"
    ATTEMPT: Final = "ce_sagaattempt"
    COMMAND_ID: Final = "ce_sagacommandid"
    REPLY_TO: Final = "ce_sagareplyto"
    COMPENSATES: Final = "ce_sagacompensates"
    OUTCOME: Final = "ce_sagaoutcome"
    SIGNAL: Final = "ce_sagasignal"
    """A signal's name (signals only)."""
    TRACEPARENT: Final = "traceparent"


class DeadLetterHeader:
    """Headers a dead letter carries besides the original message's own headers."""

    ORIGINAL_TOPIC: Final = "kafka_dlt-original-topic"
    ORIGINAL_PARTITION: Final = "kafka_dlt-original-partition"
    ORIGINAL_OFFSET: Final = "kafka_dlt-original-offset"
    ORIGINAL_TIMESTAMP: Final = "kafka_dlt-original-timestamp"
    ORIGINAL_CONSUMER_GROUP: Final = "kafka_dlt-original-consumer-group"
    EXCEPTION_FQCN: Final = "kafka_dlt-exception-fqcn"
    EXCEPTION_MESSAGE: Final = "kafka_dlt-exception-message"
    EXCEPTION_STACKTRACE: Final = "kafka_dlt-exception-stacktrace"
    REASON: Final = "saga_dlt-reason"
    REPLAY_COUNT: Final = "saga_dlt-replay-count"
    DEAD_LETTER_ID: Final = "saga_dlt-id"
    VALUE_DROPPED: Final = "saga_dlt-value-dropped"
    """Set (to the body's size in bytes) on a dead letter whose body was too large to keep;
    the body is still at the original topic, partition and offset."""


def encode_headers(headers: dict[str, str]) -> list[tuple[str, bytes]]:
    """Turn a str mapping into the ``(name, bytes)`` list Kafka clients send."""
    return [(name, value.encode()) for name, value in headers.items()]


def decode_headers(raw: object) -> dict[str, str]:
    """Read Kafka record headers into a str mapping; undecodable values are replaced."""
    result: dict[str, str] = {}
    if not raw:
        return result
    for item in raw:  # type: ignore[attr-defined]
        name, value = item
        if isinstance(value, bytes | bytearray):
            result[str(name)] = bytes(value).decode("utf-8", errors="replace")
        elif value is not None:
            result[str(name)] = str(value)
    return result
