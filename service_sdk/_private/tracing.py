"""An OpenTelemetry span around a handler run, when OpenTelemetry is importable.

The span is a child of the command's ``traceparent``, so a participant's work appears in the
saga's one trace. Without ``opentelemetry-api`` installed this does nothing; the SDK never
requires it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from service_sdk.contract.envelope import Envelope
from service_sdk.contract.headers import Header

try:
    from opentelemetry import trace as _trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    _PROPAGATOR: TraceContextTextMapPropagator | None = TraceContextTextMapPropagator()
except ImportError:  # OpenTelemetry is optional
    _PROPAGATOR = None

__all__ = ["handler_span"]

TRACER_NAME = "saga-service-sdk"


def _recording() -> bool:
    """True when spans go somewhere: OpenTelemetry is importable and a tracer provider is set.

    Without a provider every span is a no-op, and building its context and attributes per
    command is skipped (measurable in a participant's profile).
    """
    return _PROPAGATOR is not None and not isinstance(
        _trace.get_tracer_provider(), _trace.ProxyTracerProvider
    )


@contextlib.contextmanager
def handler_span(envelope: Envelope, topic: str, service: str) -> Iterator[None]:
    """A ``process <topic>`` consumer span for the handling of ``envelope``.

    An exception leaving the block is recorded on the span and re-raised.
    """
    if _PROPAGATOR is None or not _recording():
        yield
        return
    carrier = {Header.TRACEPARENT: envelope.traceparent} if envelope.traceparent else {}
    # An invalid traceparent extracts to an empty context: the span then starts a new trace.
    parent = _PROPAGATOR.extract(carrier)
    attributes: dict[str, str | int] = {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.destination.name": topic,
        "messaging.message.id": envelope.message_id,
        "saga.id": envelope.saga_id,
        "saga.type": envelope.saga_type,
        "saga.step": envelope.step or "",
        "saga.command_id": envelope.command_id or "",
        "saga.attempt": envelope.attempt,
        "saga.service": service,
    }
    tracer = _trace.get_tracer(TRACER_NAME)
    with tracer.start_as_current_span(
        f"process {topic}", context=parent, kind=_trace.SpanKind.CONSUMER, attributes=attributes
    ):
        yield
