"""Participant SDK and the wire contract of the saga coordinator.

The contract names (:mod:`service_sdk.contract`) import eagerly and cheaply. The runtime
(``ServiceRunner``, ``Service``, metrics) loads on first use, so importing the contract through
this package never pulls in aiokafka, SQLAlchemy or prometheus_client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from service_sdk.contract import (
    FENCE_MESSAGE_TYPE,
    SPEC_VERSION,
    Command,
    ContractError,
    DeadLetterHeader,
    DeadLetterReason,
    Envelope,
    Header,
    MalformedMessageError,
    MessageKind,
    Outcome,
    ParticipantError,
    SignalEnvelope,
    Topics,
    UnknownMessageTypeError,
    decode_envelope,
    decode_headers,
    decode_signal,
    encode_headers,
    new_message_id,
)
from service_sdk.errors import CommandRejected, HandlerRegistrationError

if TYPE_CHECKING:
    from service_sdk.config import KafkaConfig
    from service_sdk.dead_letters import dead_letter_headers
    from service_sdk.metrics import MetricsServer, ServiceMetrics
    from service_sdk.observer import RunnerObserver
    from service_sdk.runner import ServiceRunner
    from service_sdk.service import (
        BatchContext,
        BatchResult,
        Deferred,
        HandlerContext,
        HandlerResult,
        Service,
    )
    from service_sdk.signals import send_signal, signal_envelope

__all__ = [
    "FENCE_MESSAGE_TYPE",
    "SPEC_VERSION",
    "BatchContext",
    "BatchResult",
    "Command",
    "CommandRejected",
    "ContractError",
    "DeadLetterHeader",
    "DeadLetterReason",
    "Deferred",
    "Envelope",
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

_LAZY = {
    "dead_letter_headers": "service_sdk.dead_letters",
    "KafkaConfig": "service_sdk.config",
    "MetricsServer": "service_sdk.metrics",
    "ServiceMetrics": "service_sdk.metrics",
    "RunnerObserver": "service_sdk.observer",
    "ServiceRunner": "service_sdk.runner",
    "BatchContext": "service_sdk.service",
    "BatchResult": "service_sdk.service",
    "Deferred": "service_sdk.service",
    "HandlerContext": "service_sdk.service",
    "HandlerResult": "service_sdk.service",
    "Service": "service_sdk.service",
    "send_signal": "service_sdk.signals",
    "signal_envelope": "service_sdk.signals",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'service_sdk' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this hook
    return value
