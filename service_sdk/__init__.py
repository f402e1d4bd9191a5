"""Participant SDK and the wire contract of the saga coordinator."""

from service_sdk._private.dead_letters import dead_letter_headers
from service_sdk.config import KafkaConfig
from service_sdk.envelope import (
    SPEC_VERSION,
    Command,
    Envelope,
    MessageKind,
    Outcome,
    decode_envelope,
    new_message_id,
)
from service_sdk.errors import (
    CommandRejected,
    ContractError,
    HandlerRegistrationError,
    MalformedMessageError,
    ParticipantError,
    UnknownMessageTypeError,
)
from service_sdk.headers import DeadLetterHeader, Header, decode_headers, encode_headers
from service_sdk.metrics import MetricsServer, ServiceMetrics
from service_sdk.runner import RunnerObserver, ServiceRunner
from service_sdk.service import Deferred, HandlerContext, HandlerResult, Service
from service_sdk.topics import Topics

__all__ = [
    "SPEC_VERSION",
    "Command",
    "CommandRejected",
    "ContractError",
    "DeadLetterHeader",
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
    "Topics",
    "UnknownMessageTypeError",
    "dead_letter_headers",
    "decode_envelope",
    "decode_headers",
    "encode_headers",
    "new_message_id",
]
