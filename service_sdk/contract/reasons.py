"""Why a message was dead-lettered: the value of the ``saga_dlt-reason`` header.

One vocabulary for the coordinator and the SDK, so dashboards and replay filters can rely on
it whichever process wrote the dead letter.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["DeadLetterReason"]


class DeadLetterReason(StrEnum):
    """Machine-readable reasons a record was sent to ``<topic>.dlq``."""

    CONTRACT = "contract"
    """The record breaks the wire contract in a way no narrower reason names."""
    MALFORMED = "malformed"
    """The bytes are not a JSON envelope (or the key/headers are unusable)."""
    UNKNOWN_TYPE = "unknown_type"
    """A participant has no handler for the command's message type."""
    SCHEMA = "schema"
    """The envelope or its payload fails validation."""
    HANDLER_ERROR = "handler_error"
    """A participant's handler kept raising after its retries."""
    UNEXPECTED_KIND = "unexpected_kind"
    """A message kind the receiving topic does not take (e.g. a command on saga.replies)."""
    UNKNOWN_SAGA_TYPE = "unknown_saga_type"
    """No definition of that saga type is registered in the coordinator."""
    UNKNOWN_SAGA = "unknown_saga"
    """A reply or a signal for a saga id the coordinator never started."""
    INVALID_DATA = "invalid_data"
    """A start request whose data fails the saga's data model."""
    CONFLICTING_START = "conflicting_start"
    """A start request for a saga id that exists already with other data (or type): the
    first start won; this one would be lost silently otherwise."""
    PROCESSING_ERROR = "processing_error"
    """Applying the message failed for a reason tied to that message alone."""
    UNSENDABLE = "unsendable"
    """Kafka refuses the record for good (larger than the producer's max request size, or an
    invalid topic): a coordinator's outbox row or a participant's reply, never published."""
    SIGNAL_NOT_AWAITED = "signal_not_awaited"
    """A signal its saga does not wait for and never will: no wait of that name, or the
    wait already passed."""
    SIGNAL_INVALID = "signal_invalid"
    """A signal whose payload fails the payload model of the wait it is for."""
    SAGA_TERMINAL = "saga_terminal"
    """A signal for a saga that has ended (COMPLETED, COMPENSATED or FAILED)."""
