"""Signals: named events from outside for one saga (an approval, a confirmation, ...).

A signal travels on ``saga.signals`` (see :attr:`~service_sdk.contract.Topics.signals`),
keyed by saga id so it shares a partition with nothing it must be ordered against but stays
with its saga. The body is a :class:`SignalEnvelope` as UTF-8 JSON. The coordinator applies it
to the saga: a saga waiting for that signal takes it, an active saga whose wait for it lies
ahead keeps it until the wait begins, anything else is dead-lettered with a reason
(``signal_not_awaited``, ``signal_invalid``, ``saga_terminal``, ``unknown_saga``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from service_sdk.contract.envelope import SPEC_VERSION, new_message_id
from service_sdk.contract.errors import MalformedMessageError
from service_sdk.contract.headers import Header

__all__ = ["SIGNAL_MESSAGE_TYPE", "SIGNAL_NAME_PATTERN", "SignalEnvelope", "decode_signal"]

SIGNAL_MESSAGE_TYPE: Final = "saga.signal"
"""The ``ce_type`` header of every signal (its name is in the body and ``ce_sagasignal``)."""

SIGNAL_NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$"
"""What a signal name may be: letters, digits and ``_ . : -``, not starting with punctuation."""


class SignalEnvelope(BaseModel):
    """One signal for one saga.

    Attributes:
        message_id: Unique per signal; the coordinator's inbox de-duplicates on it, so a
            re-sent signal (same id) is applied once.
        saga_id: The saga the signal is for; also the Kafka key.
        name: The signal's name, the one a ``WaitForSignal`` step waits for (``approval``).
        payload: The signal's data; a wait with a payload model validates it.
        sent_at: When the sender sent it (timezone-aware; informative).
        source: Who sent it (a service, ``http-api``, ``saga-cli``).
        traceparent: W3C trace context, if the sender has one.
    """

    # Tolerant reader, as for the envelope: unknown fields are kept aside, never refused.
    model_config = ConfigDict(frozen=True, extra="allow")

    spec_version: str = SPEC_VERSION
    kind: Literal["signal"] = "signal"
    message_id: str = Field(default_factory=new_message_id, min_length=1, max_length=200)
    saga_id: str = Field(min_length=1, max_length=200)
    name: str = Field(min_length=1, max_length=200, pattern=SIGNAL_NAME_PATTERN)
    payload: dict[str, Any] = Field(default_factory=dict)
    sent_at: AwareDatetime = Field(default_factory=lambda: datetime.now(UTC))
    source: str = Field(default="", max_length=200)
    traceparent: str | None = None

    @property
    def message_type(self) -> str:
        """``saga.signal``: what the unknown-field counters and logs file a signal under."""
        return SIGNAL_MESSAGE_TYPE

    @property
    def unknown_fields(self) -> tuple[str, ...]:
        """Top-level fields of the received JSON this contract version does not define."""
        return tuple(sorted(self.model_extra or ()))

    def to_bytes(self) -> bytes:
        """The record body (without unknown fields)."""
        extra = self.model_extra
        return self.model_dump_json(exclude=set(extra) if extra else None).encode()

    def key(self) -> bytes:
        """The record key: the saga id."""
        return self.saga_id.encode()

    def headers(self) -> dict[str, str]:
        """The routing facts as header values."""
        values: dict[str, str | None] = {
            Header.ID: self.message_id,
            Header.TYPE: SIGNAL_MESSAGE_TYPE,
            Header.SOURCE: self.source,
            Header.SPEC_VERSION: self.spec_version,
            Header.TIME: self.sent_at.isoformat(),
            Header.CONTENT_TYPE: "application/json",
            Header.KIND: self.kind,
            Header.SAGA_ID: self.saga_id,
            Header.SIGNAL: self.name,
            Header.TRACEPARENT: self.traceparent,
        }
        return {name: value for name, value in values.items() if value is not None}


def decode_signal(body: bytes | None) -> SignalEnvelope:
    """Parse a record body into a signal.

    Raises:
        MalformedMessageError: The body is empty, not JSON, or not a valid signal.
    """
    if not body:
        raise MalformedMessageError("empty message body")
    try:
        return SignalEnvelope.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())) or "body"
        raise MalformedMessageError(
            f"invalid signal ({exc.error_count()} error(s)); {where}: {first.get('msg')}"
        ) from exc
