"""Errors raised by the participant SDK.

The tree::

    ParticipantError                 root of everything the SDK raises
    ├── CommandRejected              a handler's business "no": the saga compensates
    ├── CommandFencedError           a deferred command was fenced: it can no longer be answered
    ├── ContractError                a message breaks the wire contract (dead-lettered)
    │   ├── MalformedMessageError    bytes that are not a JSON envelope
    │   └── UnknownMessageTypeError  no handler or model for the message type
    └── HandlerRegistrationError     a handler declared wrongly (raised at import)

The root and the contract errors live in :mod:`service_sdk.contract.errors` (a leaf the
coordinator's core imports); they are re-exported here.
"""

from __future__ import annotations

from service_sdk.contract.errors import (
    ContractError,
    MalformedMessageError,
    ParticipantError,
    UnknownMessageTypeError,
)

__all__ = [
    "CommandFencedError",
    "CommandRejected",
    "ContractError",
    "HandlerRegistrationError",
    "MalformedMessageError",
    "ParticipantError",
    "UnknownMessageTypeError",
]


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


class HandlerRegistrationError(ParticipantError):
    """A handler or command model is declared wrongly."""


class CommandFencedError(ParticipantError):
    """A deferred command can no longer be answered: the saga gave up on it and undid it.

    Raised by ``ServiceRunner.complete_later`` and ``reject_later``. An undo (a compensation
    or a fence naming the command in ``compensates``) arrived while the command was deferred;
    the SDK turned its record into a tombstone and did not run the compensation handler. The
    saga counts the command as never having taken effect: whatever the deferred work did or
    started must be undone or abandoned by the service itself.

    Attributes:
        command_id: The deferred command.
    """

    def __init__(self, command_id: str) -> None:
        super().__init__(
            f"command {command_id!r} is fenced: the saga gave up on it and undid it, "
            "so it can no longer be answered; undo or abandon its deferred work"
        )
        self.command_id = command_id
