"""Participant SDK and the wire contract of the saga coordinator."""

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
from service_sdk.topics import Topics

__all__ = [
    "SPEC_VERSION",
    "Command",
    "CommandRejected",
    "ContractError",
    "DeadLetterHeader",
    "Envelope",
    "HandlerRegistrationError",
    "Header",
    "MalformedMessageError",
    "MessageKind",
    "Outcome",
    "ParticipantError",
    "Topics",
    "UnknownMessageTypeError",
    "decode_envelope",
    "decode_headers",
    "encode_headers",
    "new_message_id",
]
