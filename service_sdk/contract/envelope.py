"""The message envelope every command, reply, start request and saga event travels in.

The body of a Kafka record is the envelope as UTF-8 JSON; the record key is the saga id, so
all messages of one saga share a partition; the headers repeat the routing facts (see
:mod:`service_sdk.contract.headers`). Teams that do not use Python produce the same JSON.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from service_sdk.contract.errors import MalformedMessageError
from service_sdk.contract.headers import Header

__all__ = [
    "FENCE_MESSAGE_TYPE",
    "SPEC_VERSION",
    "Command",
    "Envelope",
    "MessageKind",
    "Outcome",
    "decode_envelope",
    "new_message_id",
]

SPEC_VERSION = "1.0"

FENCE_MESSAGE_TYPE = "saga.fence"
"""The command that undoes a step without a compensation: it carries ``compensates``; the
participant refuses that command for good if it has not run it, and answers success with
``{"fenced": true}`` — or ``{"fenced": false, "executed": "success"}`` when it had already run
it (the effect exists and cannot be undone)."""


class MessageKind(StrEnum):
    """What an envelope is."""

    COMMAND = "command"
    REPLY = "reply"
    START = "start"
    EVENT = "event"


class Outcome(StrEnum):
    """How a participant answered a command."""

    SUCCESS = "success"
    FAILURE = "failure"
    """A final business failure: the saga compensates."""
    RETRYABLE = "retryable"
    """A transient failure: the coordinator may send the command again."""


def new_message_id() -> str:
    """A fresh, globally unique message id."""
    return str(uuid.uuid4())


class Envelope(BaseModel):
    """One message of the saga protocol.

    Attributes:
        message_id: Unique per message; the inbox de-duplicates on it.
        kind: Command, reply, start request or lifecycle event.
        message_type: Dotted name, e.g. ``inventory.reserve_stock``; for a reply, the
            type of the command it answers.
        source: The service or process that produced the message.
        saga_id: The saga the message belongs to; also the Kafka key.
        saga_type: The saga definition's name, e.g. ``order``.
        step: The saga step a command or reply belongs to.
        attempt: 1 for the first send of a command, +1 for every re-send.
        command_id: A command's id; a reply carries the id of the command it answers.
            Re-sends keep the id, so a participant answers them from its record.
        reply_to: The topic a participant publishes its reply to.
        compensates: On a compensation or a fence: the forward command id it undoes when that
            command may not have run yet (the saga gave up on it). A participant that has not
            run that command records a tombstone instead, answers success with
            ``{"fenced": true}``, and refuses the command for good if it arrives later.
        outcome: A reply's outcome.
        error: A failure's reason.
        payload: The command's arguments, the reply's data or the saga's start data.
        occurred_at: When the message was produced (timezone-aware).
        traceparent: W3C trace context, carried from the start request to every message.
    """

    # Tolerant reader: a field this version does not know (a newer producer's addition) is
    # kept aside in ``unknown_fields`` and never written back out, not refused.
    model_config = ConfigDict(frozen=True, extra="allow")

    spec_version: str = SPEC_VERSION
    message_id: str = Field(default_factory=new_message_id, min_length=1, max_length=200)
    kind: MessageKind
    message_type: str = Field(min_length=1, max_length=200)
    source: str = Field(default="", max_length=200)
    saga_id: str = Field(min_length=1, max_length=200)
    saga_type: str = Field(min_length=1, max_length=200)
    step: str | None = None
    attempt: int = Field(default=1, ge=1)
    command_id: str | None = None
    reply_to: str | None = None
    compensates: str | None = Field(default=None, max_length=200)
    outcome: Outcome | None = None
    error: str | None = None
    payload: dict[str, Any] = Field(default_factory=dict)
    occurred_at: AwareDatetime = Field(default_factory=lambda: datetime.now(UTC))
    traceparent: str | None = None

    @property
    def unknown_fields(self) -> tuple[str, ...]:
        """Top-level fields of the received JSON this contract version does not define."""
        return tuple(sorted(self.model_extra or ()))

    def to_bytes(self) -> bytes:
        """The record body (without unknown fields)."""
        extra = self.model_extra
        return self.model_dump_json(exclude=set(extra) if extra else None).encode()

    def key(self) -> bytes:
        """The record key: the saga id, so one saga's messages share a partition."""
        return self.saga_id.encode()

    def headers(self) -> dict[str, str]:
        """The routing facts as header values."""
        values: dict[str, str | None] = {
            Header.ID: self.message_id,
            Header.TYPE: self.message_type,
            Header.SOURCE: self.source,
            Header.SPEC_VERSION: self.spec_version,
            Header.TIME: self.occurred_at.isoformat(),
            Header.CONTENT_TYPE: "application/json",
            Header.KIND: self.kind.value,
            Header.SAGA_ID: self.saga_id,
            Header.SAGA_TYPE: self.saga_type,
            Header.STEP: self.step,
            Header.ATTEMPT: str(self.attempt),
            Header.COMMAND_ID: self.command_id,
            Header.REPLY_TO: self.reply_to,
            Header.COMPENSATES: self.compensates,
            Header.OUTCOME: self.outcome.value if self.outcome else None,
            Header.TRACEPARENT: self.traceparent,
        }
        return {name: value for name, value in values.items() if value is not None}


def decode_envelope(body: bytes | None) -> Envelope:
    """Parse a record body into an envelope.

    Raises:
        MalformedMessageError: The body is empty, not JSON, or not a valid envelope.
    """
    if not body:
        raise MalformedMessageError("empty message body")
    try:
        return Envelope.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())) or "body"
        raise MalformedMessageError(
            f"invalid envelope ({exc.error_count()} error(s)); {where}: {first.get('msg')}"
        ) from exc


class Command(BaseModel):
    """Base of a command's payload model; subclasses set ``message_type``.

    Unknown payload fields are ignored (tolerant reader): a coordinator whose definition
    sends one more field does not break participants that do not know it yet.

    A command declares the model of its success reply's payload in ``reply_model``: the
    coordinator validates the reply against it and hands the step's ``on_success`` the typed
    reply; the AsyncAPI document publishes its JSON Schema.

    Example:
        class ReserveStock(Command):
            message_type: ClassVar[str] = "inventory.reserve_stock"
            reply_model: ClassVar[type[BaseModel] | None] = StockReserved
            order_id: str
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    message_type: ClassVar[str] = ""
    reply_model: ClassVar[type[BaseModel] | None] = None
