"""The wire contract: envelope, headers, topic names and the SDK's public API."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, ClassVar

import pytest
from pydantic import ValidationError

import service_sdk
from service_sdk import (
    SPEC_VERSION,
    Command,
    ContractError,
    DeadLetterHeader,
    Envelope,
    Header,
    MalformedMessageError,
    MessageKind,
    Outcome,
    ParticipantError,
    Topics,
    decode_envelope,
    decode_headers,
    encode_headers,
    new_message_id,
)

WHEN = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def reply(**changes: Any) -> Envelope:
    fields: dict[str, Any] = {
        "message_id": "m-1",
        "kind": MessageKind.REPLY,
        "message_type": "payment.charge_payment",
        "source": "payment",
        "saga_id": "saga-1",
        "saga_type": "order",
        "step": "charge_payment",
        "attempt": 2,
        "command_id": "c-1",
        "outcome": Outcome.SUCCESS,
        "payload": {"charge_id": "ch-1", "nested": {"list": [1, 2.5, None, "x"]}},
        "occurred_at": WHEN,
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    }
    fields.update(changes)
    return Envelope(**fields)


def test_envelope_round_trips_through_bytes() -> None:
    original = reply()
    decoded = decode_envelope(original.to_bytes())
    assert decoded == original
    assert decoded.occurred_at == WHEN
    assert decoded.spec_version == SPEC_VERSION


def test_envelope_with_another_timezone_round_trips_to_the_same_instant() -> None:
    original = reply(occurred_at=WHEN.astimezone(timezone(timedelta(hours=5, minutes=30))))
    assert decode_envelope(original.to_bytes()).occurred_at == WHEN


def test_envelope_body_is_plain_json() -> None:
    body = json.loads(reply().to_bytes())
    assert body["kind"] == "reply"
    assert body["outcome"] == "success"
    assert body["attempt"] == 2
    assert body["payload"]["charge_id"] == "ch-1"


def test_envelope_defaults() -> None:
    envelope = Envelope(
        kind=MessageKind.COMMAND, message_type="a.b", saga_id="s", saga_type="order"
    )
    assert envelope.attempt == 1
    assert envelope.payload == {}
    assert envelope.message_id
    assert envelope.occurred_at.tzinfo is not None
    assert (
        envelope.message_id
        != Envelope(
            kind=MessageKind.COMMAND, message_type="a.b", saga_id="s", saga_type="order"
        ).message_id
    )


def test_key_is_the_saga_id() -> None:
    assert reply().key() == b"saga-1"


def test_headers_carry_the_routing_facts() -> None:
    assert reply().headers() == {
        "ce_id": "m-1",
        "ce_type": "payment.charge_payment",
        "ce_source": "payment",
        "ce_specversion": SPEC_VERSION,
        "ce_time": WHEN.isoformat(),
        "content-type": "application/json",
        "ce_sagakind": "reply",
        "ce_sagaid": "saga-1",
        "ce_sagatype": "order",
        "ce_sagastep": "charge_payment",
        "ce_sagaattempt": "2",
        "ce_sagacommandid": "c-1",
        "ce_sagaoutcome": "success",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    }


def test_headers_omit_absent_values() -> None:
    headers = reply(step=None, command_id=None, outcome=None, traceparent=None).headers()
    for name in (Header.STEP, Header.COMMAND_ID, Header.OUTCOME, Header.TRACEPARENT):
        assert name not in headers
    assert Header.REPLY_TO not in headers
    assert reply(reply_to="saga.replies").headers()[Header.REPLY_TO] == "saga.replies"


def test_header_names_follow_conventions() -> None:
    assert Header.ID == "ce_id"
    assert Header.TRACEPARENT == "traceparent"
    assert DeadLetterHeader.ORIGINAL_TOPIC == "kafka_dlt-original-topic"
    assert DeadLetterHeader.EXCEPTION_FQCN == "kafka_dlt-exception-fqcn"
    assert DeadLetterHeader.REASON.startswith("saga_dlt-")


def test_headers_encode_and_decode() -> None:
    headers = reply().headers()
    encoded = encode_headers(headers)
    assert all(isinstance(value, bytes) for _, value in encoded)
    assert decode_headers(encoded) == headers


@pytest.mark.parametrize("raw", [None, [], ()])
def test_decode_headers_of_nothing_is_empty(raw: object) -> None:
    assert decode_headers(raw) == {}


def test_decode_headers_tolerates_odd_values() -> None:
    raw = [("a", b"\xff\xfe"), ("b", None), ("c", bytearray(b"x")), ("d", "plain")]
    assert decode_headers(raw) == {"a": "\ufffd\ufffd", "c": "x", "d": "plain"}


def _valid_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(reply().to_bytes())
    body.update(changes)
    return body


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param(b"", "empty message body", id="empty"),
        pytest.param(None, "empty message body", id="none"),
        pytest.param(b"not json", "invalid envelope", id="not-json"),
        pytest.param(b"[1, 2]", "invalid envelope", id="json-array"),
        pytest.param(b"\xff\xfe", "invalid envelope", id="not-utf8"),
        pytest.param(json.dumps({"kind": "reply"}).encode(), "message_type", id="missing-fields"),
        pytest.param(json.dumps(_valid_body(kind="gossip")).encode(), "kind", id="wrong-kind"),
        pytest.param(json.dumps(_valid_body(attempt=0)).encode(), "attempt", id="attempt-zero"),
        pytest.param(json.dumps(_valid_body(saga_id="")).encode(), "saga_id", id="empty-saga-id"),
        pytest.param(
            json.dumps(_valid_body(occurred_at="2025-03-01T12:00:00")).encode(),
            "occurred_at",
            id="naive-datetime",
        ),
        pytest.param(
            json.dumps(_valid_body(outcome="maybe")).encode(), "outcome", id="wrong-outcome"
        ),
    ],
)
def test_decode_rejects_malformed_bodies(body: bytes | None, message: str) -> None:
    with pytest.raises(MalformedMessageError, match=message) as info:
        decode_envelope(body)
    assert isinstance(info.value, ContractError)
    assert isinstance(info.value, ParticipantError)
    assert info.value.reason_code == "malformed"


def test_envelope_is_immutable_and_strict() -> None:
    envelope = reply()
    with pytest.raises(ValidationError):
        envelope.attempt = 3  # type: ignore[misc]
    with pytest.raises(ValidationError):
        reply(occurred_at=datetime(2025, 3, 1))  # noqa: DTZ001 - naive on purpose


def test_command_models_ignore_unknown_fields_and_require_known_ones() -> None:
    class Ping(Command):
        message_type: ClassVar[str] = "test.ping"
        order_id: str

    assert Ping(order_id="o").model_dump() == {"order_id": "o"}
    assert Ping.model_validate({"order_id": "o", "other": 1}).model_dump() == {"order_id": "o"}
    with pytest.raises(ValidationError):
        Ping.model_validate({"other": 1})
    assert Command.message_type == ""


def test_unknown_envelope_fields_are_ignored_kept_aside_and_not_written_back() -> None:
    body = _valid_body(correlation_id="c-9", x_team={"a": 1})
    envelope = decode_envelope(json.dumps(body).encode())
    assert envelope.unknown_fields == ("correlation_id", "x_team")
    assert "correlation_id" not in json.loads(envelope.to_bytes())
    assert envelope.saga_id == body["saga_id"]
    assert reply().unknown_fields == ()


def test_required_envelope_fields_stay_required() -> None:
    body = _valid_body(correlation_id="c-9")
    del body["saga_type"]
    with pytest.raises(MalformedMessageError, match="saga_type"):
        decode_envelope(json.dumps(body).encode())


def test_message_ids_are_unique() -> None:
    assert len({new_message_id() for _ in range(100)}) == 100


# --- topics --------------------------------------------------------------------------------


def test_topic_names() -> None:
    topics = Topics()
    assert topics.commands("inventory") == "inventory.commands"
    assert topics.replies == "saga.replies"
    assert topics.requests == "saga.requests"
    assert topics.events == "saga.events"
    assert Topics.dead_letters("saga.replies") == "saga.replies.dlq"


def test_topic_names_with_prefix() -> None:
    topics = Topics(prefix="tenant-a.")
    assert topics.commands("payment") == "tenant-a.payment.commands"
    assert topics.replies == "tenant-a.saga.replies"
    assert topics.requests == "tenant-a.saga.requests"
    assert topics.events == "tenant-a.saga.events"
    assert topics.dead_letters(topics.replies) == "tenant-a.saga.replies.dlq"


# --- the SDK's public API -------------------------------------------------------------------


def test_sdk_public_api_is_pinned() -> None:
    """Changing the SDK's public names is a deliberate act: update this list with it."""
    assert sorted(service_sdk.__all__) == [
        "BatchContext",
        "BatchResult",
        "Command",
        "CommandRejected",
        "ContractError",
        "DeadLetterHeader",
        "DeadLetterReason",
        "Deferred",
        "Envelope",
        "FENCE_MESSAGE_TYPE",
        "HandlerContext",
        "HandlerRegistrationError",
        "HandlerResult",
        "Header",
        "KafkaConfig",
        "MalformedMessageError",
        "MessageKind",
        "MetricsServer",
        "Outcome",
        "ParticipantError",
        "RunnerObserver",
        "SPEC_VERSION",
        "Service",
        "ServiceMetrics",
        "ServiceRunner",
        "SignalEnvelope",
        "Topics",
        "UnknownMessageTypeError",
        "dead_letter_headers",
        "decode_envelope",
        "decode_headers",
        "decode_signal",
        "encode_headers",
        "new_message_id",
        "send_signal",
        "signal_envelope",
    ]
    for name in service_sdk.__all__:
        assert hasattr(service_sdk, name), name
