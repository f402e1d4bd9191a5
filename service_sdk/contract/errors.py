"""Errors of the wire contract (a leaf: the coordinator's core may import it).

The tree::

    ParticipantError                 root of everything the SDK raises
    └── ContractError                a message breaks the wire contract (dead-lettered)
        ├── MalformedMessageError    bytes that are not a JSON envelope
        └── UnknownMessageTypeError  no handler or model for the message type

:mod:`service_sdk.errors` adds the participant's own errors under the same root.
"""

from __future__ import annotations

from typing import ClassVar

from service_sdk.contract.reasons import DeadLetterReason

__all__ = [
    "ContractError",
    "MalformedMessageError",
    "ParticipantError",
    "UnknownMessageTypeError",
]


class ParticipantError(Exception):
    """Root of the SDK's errors."""

    retriable: ClassVar[bool] = False


class ContractError(ParticipantError):
    """A message does not follow the wire contract; it goes to a dead-letter topic."""

    reason_code: ClassVar[DeadLetterReason] = DeadLetterReason.CONTRACT


class MalformedMessageError(ContractError):
    """The bytes are not a valid JSON envelope."""

    reason_code: ClassVar[DeadLetterReason] = DeadLetterReason.MALFORMED


class UnknownMessageTypeError(ContractError):
    """No handler or model is registered for the message type."""

    reason_code: ClassVar[DeadLetterReason] = DeadLetterReason.UNKNOWN_TYPE
