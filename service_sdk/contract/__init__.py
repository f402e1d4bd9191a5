"""The wire contract: envelope, headers, topic names, outcomes, reasons and contract errors.

A leaf package (standard library and pydantic only): the coordinator's pure core, the SDK and
services without the SDK's runtime all build on it.
"""

from service_sdk.contract.envelope import (
    FENCE_MESSAGE_TYPE,
    SPEC_VERSION,
    Command,
    Envelope,
    MessageKind,
    Outcome,
    decode_envelope,
    new_message_id,
)
from service_sdk.contract.errors import (
    ContractError,
    MalformedMessageError,
    ParticipantError,
    UnknownMessageTypeError,
)
from service_sdk.contract.headers import DeadLetterHeader, Header, decode_headers, encode_headers
from service_sdk.contract.heartbeat import Heartbeat, PickedUpCommand
from service_sdk.contract.reasons import DeadLetterReason
from service_sdk.contract.signals import (
    SIGNAL_MESSAGE_TYPE,
    SIGNAL_NAME_PATTERN,
    SignalEnvelope,
    decode_signal,
)
from service_sdk.contract.topics import Topics
from service_sdk.contract.undeliverable import (
    UNDELIVERABLE_KEY,
    undeliverable_payload,
    undeliverable_reason,
)

__all__ = [
    "FENCE_MESSAGE_TYPE",
    "SIGNAL_MESSAGE_TYPE",
    "SIGNAL_NAME_PATTERN",
    "SPEC_VERSION",
    "UNDELIVERABLE_KEY",
    "Command",
    "ContractError",
    "DeadLetterHeader",
    "DeadLetterReason",
    "Envelope",
    "Header",
    "Heartbeat",
    "MalformedMessageError",
    "MessageKind",
    "Outcome",
    "ParticipantError",
    "PickedUpCommand",
    "SignalEnvelope",
    "Topics",
    "UnknownMessageTypeError",
    "decode_envelope",
    "decode_headers",
    "decode_signal",
    "encode_headers",
    "new_message_id",
    "undeliverable_payload",
    "undeliverable_reason",
]
