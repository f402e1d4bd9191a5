"""The signal envelope: round trip, tolerant reader, refusals, headers, the SDK helper."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from service_sdk import send_signal, signal_envelope
from service_sdk.contract import (
    DeadLetterReason,
    Header,
    MalformedMessageError,
    SignalEnvelope,
    Topics,
    decode_headers,
    decode_signal,
)

WHEN = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def test_a_signal_round_trips_through_bytes() -> None:
    signal = SignalEnvelope(
        saga_id="s-1", name="approval", payload={"approved": True}, sent_at=WHEN, source="hr"
    )
    decoded = decode_signal(signal.to_bytes())
    assert decoded == signal
    assert decoded.kind == "signal"
    assert signal.key() == b"s-1"


def test_unknown_fields_are_kept_aside_not_refused() -> None:
    body = json.loads(SignalEnvelope(saga_id="s-1", name="approval").to_bytes())
    body["priority"] = "high"
    decoded = decode_signal(json.dumps(body).encode())
    assert decoded.unknown_fields == ("priority",)
    assert b"priority" not in decoded.to_bytes()


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b'{"name": "approval"}',
        b'{"saga_id": "s-1", "name": "with space"}',
        b'{"saga_id": "s-1", "name": "approval", "payload": [1]}',
        b'{"saga_id": "s-1", "name": "approval", "sent_at": "2026-12-01T08:00:00"}',
    ],
)
def test_a_broken_signal_is_malformed(body: bytes) -> None:
    with pytest.raises(MalformedMessageError) as caught:
        decode_signal(body)
    assert caught.value.reason_code is DeadLetterReason.MALFORMED


def test_headers_carry_the_routing_facts() -> None:
    signal = SignalEnvelope(message_id="m-1", saga_id="s-1", name="approval", sent_at=WHEN)
    headers = signal.headers()
    assert headers[Header.ID] == "m-1"
    assert headers[Header.SAGA_ID] == "s-1"
    assert headers[Header.SIGNAL] == "approval"
    assert headers[Header.KIND] == "signal"
    assert headers[Header.TYPE] == "saga.signal"
    assert Header.TRACEPARENT not in headers


def test_the_signals_topic_takes_the_prefix() -> None:
    assert Topics().signals == "saga.signals"
    assert Topics("tenant-a.").signals == "tenant-a.saga.signals"


def test_the_signal_dead_letter_reasons_are_the_engines_rejections() -> None:
    assert {r.value for r in DeadLetterReason} >= {
        "signal_not_awaited",
        "signal_invalid",
        "saga_terminal",
        "unknown_saga",
    }


class Approval(BaseModel):
    approved: bool
    by: str


class _Recorder:
    """A producer that records what it was given and acknowledges at once."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None, Any]] = []

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        *,
        headers: Sequence[tuple[str, bytes | None]] | None = None,
    ) -> asyncio.Future[Any]:
        self.sent.append((topic, value, key, headers))
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


async def test_send_signal_publishes_one_keyed_record_and_returns_its_id() -> None:
    producer = _Recorder()
    signal_id = await send_signal(
        producer,
        "s-1",
        "approval",
        Approval(approved=True, by="ann"),
        topics=Topics("t."),
        message_id="sig-1",
        source="hr",
    )
    assert signal_id == "sig-1"
    ((topic, value, key, headers),) = producer.sent
    assert (topic, key) == ("t.saga.signals", b"s-1")
    decoded = decode_signal(value)
    assert decoded.payload == {"approved": True, "by": "ann"}
    assert decoded.source == "hr"
    assert decode_headers(headers)[Header.ID] == "sig-1"


def test_signal_envelope_refuses_a_bad_name() -> None:
    with pytest.raises(ValidationError):
        signal_envelope("s-1", "no spaces please")
    assert signal_envelope("s-1", "approval").payload == {}
