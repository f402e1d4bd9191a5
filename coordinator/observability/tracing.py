"""W3C trace context for sagas, and OpenTelemetry spans when OpenTelemetry is installed.

Every saga belongs to one trace. Its ``traceparent`` comes from whoever starts it (the HTTP
``traceparent`` header, or the Kafka start request's envelope); when none is given, or the
given one is not valid W3C, the coordinator starts a new trace (as the W3C spec asks of a
receiver that cannot parse the header). The saga row keeps it, every command and lifecycle
event carries it, and the SDK copies a command's ``traceparent`` into its reply.

With ``opentelemetry-api`` importable (the ``otel`` extra), the coordinator records spans as
children of the saga's trace context: ``saga.start`` / ``saga.apply`` for every message a batch
applied, ``saga.deadline`` for a fired deadline, ``publish <topic>`` for every outbox row the
relay sent. Participants record ``process <topic>`` around their handler (in the SDK). Without
OpenTelemetry these calls do nothing; with the API but no SDK configured, they are OpenTelemetry's
own no-ops. Spans are recorded after the fact, with the batch's start and end times, so the
transaction never waits on tracing.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from service_sdk.contract import Envelope, Header, decode_headers

if TYPE_CHECKING:
    from coordinator.core.state import SagaInstance, Transition
    from coordinator.store.records import OutboxRecord

try:
    from opentelemetry import trace as _trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    _PROPAGATOR: TraceContextTextMapPropagator | None = TraceContextTextMapPropagator()
except ImportError:  # the otel extra is optional
    _PROPAGATOR = None

__all__ = [
    "TRACER_NAME",
    "ensure_traceparent",
    "is_valid_traceparent",
    "new_traceparent",
    "otel_available",
    "record_publishes",
    "record_transitions",
    "trace_id_of",
    "with_header_traceparent",
]

TRACER_NAME = "saga-coordinator"

# version-traceid-parentid-flags, lowercase hex; a later version may append fields.
_TRACEPARENT = re.compile(
    r"^(?P<version>[0-9a-f]{2})-(?P<trace_id>[0-9a-f]{32})-(?P<parent_id>[0-9a-f]{16})"
    r"-(?P<flags>[0-9a-f]{2})(?P<rest>-.*)?$"
)


def new_traceparent() -> str:
    """A traceparent that starts a new, sampled trace: ``00-<32 hex>-<16 hex>-01``."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def is_valid_traceparent(value: str | None) -> bool:
    """True if ``value`` is a traceparent a W3C trace-context receiver accepts."""
    if not value:
        return False
    match = _TRACEPARENT.fullmatch(value.strip())
    if match is None:
        return False
    version = match["version"]
    if version == "ff" or (version == "00" and match["rest"] is not None):
        return False
    return match["trace_id"] != "0" * 32 and match["parent_id"] != "0" * 16


def ensure_traceparent(value: str | None) -> str:
    """``value`` if it is a valid traceparent, else a new trace's."""
    if value is not None and is_valid_traceparent(value):
        return value.strip()
    return new_traceparent()


def trace_id_of(traceparent: str | None) -> str | None:
    """The 32-hex trace id of a valid traceparent, else None."""
    if traceparent is None or not is_valid_traceparent(traceparent):
        return None
    return traceparent.strip().split("-")[1]


def with_header_traceparent(envelope: Envelope, record: Any) -> Envelope:
    """``envelope``, given the record's ``traceparent`` header if its body carries none.

    Producers that follow the W3C convention for Kafka set only the header; the envelope's
    field is what the coordinator keeps, so the header must not be lost on the way in.
    """
    if envelope.traceparent is not None:
        return envelope
    header = decode_headers(getattr(record, "headers", None)).get(Header.TRACEPARENT)
    if header is None or not is_valid_traceparent(header):
        return envelope
    return envelope.model_copy(update={"traceparent": header.strip()})


def otel_available() -> bool:
    """True when OpenTelemetry's API is importable, so spans are recorded (if configured)."""
    return _PROPAGATOR is not None


def _recording() -> bool:
    """True when spans go somewhere: OpenTelemetry is importable and a tracer provider is set.

    Without a provider every span is a no-op, and building its context and attributes per
    message is skipped (a few per cent of the coordinator's CPU in a profile).
    """
    return _PROPAGATOR is not None and not isinstance(
        _trace.get_tracer_provider(), _trace.ProxyTracerProvider
    )


def _record(
    name: str,
    traceparent: str | None,
    *,
    kind: str,
    start_ns: int,
    end_ns: int,
    attributes: Mapping[str, Any],
) -> None:
    if _PROPAGATOR is None:
        return
    parent = (
        _PROPAGATOR.extract({Header.TRACEPARENT: traceparent})
        if is_valid_traceparent(traceparent)
        else None
    )
    tracer = _trace.get_tracer(TRACER_NAME)
    span = tracer.start_span(
        name,
        context=parent,
        kind=_trace.SpanKind[kind],
        attributes={k: v for k, v in attributes.items() if v is not None},
        start_time=start_ns,
    )
    span.end(end_time=end_ns)


def _saga_attributes(instance: SagaInstance) -> dict[str, Any]:
    return {
        "saga.id": instance.saga_id,
        "saga.type": instance.saga_type,
        "saga.status": instance.status.value,
        "saga.step": instance.current_step,
        "saga.command_id": instance.command_id,
    }


def record_transitions(
    transitions: Iterable[tuple[SagaInstance | None, Transition]],
    *,
    start_ns: int,
    end_ns: int,
    batch_size: int,
    name: str | None = None,
) -> None:
    """One span per applied message: ``saga.start`` for a start (before is None), else
    ``saga.apply`` (or ``name``), each a child of its saga's trace context."""
    if not _recording():
        return
    for before, transition in transitions:
        instance = transition.instance
        span_name = name or ("saga.start" if before is None else "saga.apply")
        _record(
            span_name,
            instance.traceparent,
            kind="INTERNAL",
            start_ns=start_ns,
            end_ns=end_ns,
            attributes={
                **_saga_attributes(instance),
                "saga.changed": transition.changed,
                "saga.commands": len(transition.commands),
                "saga.batch_size": batch_size,
                "saga.history": ",".join(entry.kind.value for entry in transition.history),
            },
        )


def record_publishes(rows: Sequence[OutboxRecord], *, start_ns: int, end_ns: int) -> None:
    """One ``publish <topic>`` producer span per outbox row the relay sent."""
    if not _recording():
        return
    for row in rows:
        _record(
            f"publish {row.topic}",
            row.headers.get(Header.TRACEPARENT),
            kind="PRODUCER",
            start_ns=start_ns,
            end_ns=end_ns,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "publish",
                "messaging.destination.name": row.topic,
                "messaging.message.id": row.message_id,
                "saga.id": row.saga_id,
                "saga.step": row.headers.get(Header.STEP),
                "saga.command_id": row.headers.get(Header.COMMAND_ID),
            },
        )
