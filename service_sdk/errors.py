"""Errors raised by the participant SDK.

The tree::

    ParticipantError                 root of everything the SDK raises
    ├── CommandRejected              a handler's business "no": the saga compensates
    ├── ContractError                a message breaks the wire contract (dead-lettered)
    │   ├── MalformedMessageError    bytes that are not a JSON envelope
    │   └── UnknownMessageTypeError  no handler or model for the message type
    └── HandlerRegistrationError     a handler declared wrongly (raised at import)
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "CommandRejected",
    "ContractError",
    "HandlerRegistrationError",
    "MalformedMessageError",
    "ParticipantError",
    "UnknownMessageTypeError",
]


class ParticipantError(Exception):
    """Root of the SDK's errors."""

    retriable: ClassVar[bool] = False


class CommandRejected(ParticipantError):
    """Raised by a handler to refuse a command for a business reason.

    Args:
        reason: Human-readable reason, carried to the coordinator in the reply.
        retryable: True when the failure is transient and the coordinator may send the
            command again (same command id, next attempt); False for a final business
            failure that leads to compensation.
        data: Optional structured details for the reply payload.
    """

    def __init__(
        self, reason: str, *, retryable: bool = False, data: dict[str, object] | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.data = dict(data or {})


class ContractError(ParticipantError):
    """A message does not follow the wire contract; it goes to a dead-letter topic."""

    reason_code: ClassVar[str] = "contract"


class MalformedMessageError(ContractError):
    """The bytes are not a valid JSON envelope."""

    reason_code: ClassVar[str] = "malformed"


class UnknownMessageTypeError(ContractError):
    """No handler or model is registered for the message type."""

    reason_code: ClassVar[str] = "unknown_type"


class HandlerRegistrationError(ParticipantError):
    """A handler or command model is declared wrongly."""
