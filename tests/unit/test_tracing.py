"""W3C traceparent handling and the spans recorded around sagas (in-memory exporter)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest
from opentelemetry.trace import SpanKind

from coordinator.core.machine import start_saga
from coordinator.core.state import StartSaga
from coordinator.observability.tracing import (
    ensure_traceparent,
    is_valid_traceparent,
    new_traceparent,
    otel_available,
    record_publishes,
    record_transitions,
    trace_id_of,
    with_header_traceparent,
)
from coordinator.store.records import OutboxRecord
from saga_defs import OrderData, OrderSaga
from saga_defs.order import OrderItem
from service_sdk import Envelope, MessageKind
from service_sdk._private.tracing import handler_span

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
NOW = datetime(2025, 1, 2, tzinfo=UTC)
ORDER = OrderData(
    order_id="o-1", customer_id="c-1", items=(OrderItem(sku="s", quantity=1),), amount_cents=1
)


def test_a_new_traceparent_is_valid_w3c_and_unique() -> None:
    values = {new_traceparent() for _ in range(100)}
    assert len(values) == 100
    for value in values:
        assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", value)
        assert is_valid_traceparent(value)


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        (TRACEPARENT, True),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", True),
        ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future", True),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", False),
        ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", False),
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", False),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", False),
        ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", False),
        ("00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01", False),
        ("garbage", False),
        ("", False),
        (None, False),
    ],
)
def test_traceparent_validation_follows_w3c(value: str | None, valid: bool) -> None:
    assert is_valid_traceparent(value) is valid


def test_ensure_keeps_a_valid_traceparent_and_replaces_others() -> None:
    assert ensure_traceparent(TRACEPARENT) == TRACEPARENT
    for bad in (None, "", "nonsense"):
        replaced = ensure_traceparent(bad)
        assert is_valid_traceparent(replaced)
    assert trace_id_of(TRACEPARENT) == TRACE_ID
    assert trace_id_of("nonsense") is None


def test_a_traceparent_only_in_the_record_header_is_adopted() -> None:
    class Record:
        def __init__(self, headers: list[tuple[str, bytes]]) -> None:
            self.headers = headers

    bare = Envelope(kind=MessageKind.START, message_type="order.start", saga_id="s", saga_type="o")
    header = [("traceparent", TRACEPARENT.encode())]
    assert with_header_traceparent(bare, Record(header)).traceparent == TRACEPARENT
    assert with_header_traceparent(bare, Record([("traceparent", b"junk")])) is bare
    assert with_header_traceparent(bare, Record([])) is bare
    own = bare.model_copy(update={"traceparent": new_traceparent()})
    assert with_header_traceparent(own, Record(header)) is own


def test_opentelemetry_is_available_in_the_test_environment() -> None:
    assert otel_available()


def test_batch_and_publish_spans_are_children_of_the_sagas_trace(span_exporter: Any) -> None:
    transition = start_saga(
        OrderSaga, "s-1", StartSaga("m-1", ORDER.model_dump(), TRACEPARENT), NOW
    )
    record_transitions([(None, transition)], start_ns=1, end_ns=2, batch_size=1)
    row = OutboxRecord(
        id=1,
        saga_id="s-1",
        topic="inventory.commands",
        key=b"s-1",
        value=b"{}",
        headers={"traceparent": TRACEPARENT, "ce_sagastep": "reserve_inventory"},
        message_id="c-1",
        created_at=NOW,
    )
    record_publishes([row], start_ns=3, end_ns=4)
    spans = span_exporter.get_finished_spans()
    assert [s.name for s in spans] == ["saga.start", "publish inventory.commands"]
    assert {format(s.context.trace_id, "032x") for s in spans} == {TRACE_ID}
    assert all(s.parent is not None and s.parent.span_id == 0x00F067AA0BA902B7 for s in spans)
    start, publish = spans
    assert start.attributes is not None
    assert start.attributes["saga.id"] == "s-1"
    assert publish.kind is SpanKind.PRODUCER
    assert publish.attributes is not None
    assert publish.attributes["saga.step"] == "reserve_inventory"


def test_the_sdk_handler_span_is_a_child_of_the_commands_trace(span_exporter: Any) -> None:
    command = Envelope(
        kind=MessageKind.COMMAND,
        message_type="inventory.reserve_stock",
        saga_id="s-1",
        saga_type="order",
        step="reserve_inventory",
        command_id="c-1",
        traceparent=TRACEPARENT,
    )
    with pytest.raises(RuntimeError), handler_span(command, "inventory.commands", "inventory"):
        raise RuntimeError("handler failed")
    (span,) = span_exporter.get_finished_spans()
    assert span.name == "process inventory.commands"
    assert span.kind is SpanKind.CONSUMER
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert not span.status.is_ok
    assert [e.name for e in span.events] == ["exception"]


def test_without_a_tracer_provider_no_span_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    # OpenTelemetry's API installed but no provider set: every span would be a no-op, so none
    # is started (starting one costs context extraction and attributes per message).
    from opentelemetry import trace

    def no_span(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a span was started without a tracer provider")

    monkeypatch.setattr(trace, "get_tracer_provider", trace.ProxyTracerProvider)
    monkeypatch.setattr(trace, "get_tracer", no_span)
    transition = start_saga(
        OrderSaga, "s-1", StartSaga("m-1", ORDER.model_dump(), TRACEPARENT), NOW
    )
    record_transitions([(None, transition)], start_ns=1, end_ns=2, batch_size=1)
    row = OutboxRecord(
        id=1, saga_id="s-1", topic="t", key=b"s-1", value=b"{}", headers={}, message_id="c-1",
        created_at=NOW,
    )  # fmt: skip
    record_publishes([row], start_ns=3, end_ns=4)
    command = Envelope(
        kind=MessageKind.COMMAND, message_type="inventory.reserve_stock", saga_id="s-1",
        saga_type="order", step="reserve_inventory", command_id="c-1", traceparent=TRACEPARENT,
    )  # fmt: skip
    with handler_span(command, "inventory.commands", "inventory"):
        pass
