"""The marker of a reply whose real content could never be delivered.

A participant whose reply Kafka will never take (larger than the producer's
``max_request_size``, or addressed to an invalid topic) dead-letters that reply and answers
the command with a small stand-in instead: the same outcome, and a payload holding only
:data:`UNDELIVERABLE_KEY`. The coordinator recognises it whatever the step's payload model
accepts: a SUCCESS with the marker means the effect happened but its result cannot be
delivered, so the step is undone with the ones before it.

Example::

    {"saga_undeliverable": {"reason": "MessageSizeTooLargeError: ...", "bytes": 1500321,
                            "dead_letter_id": "6f0c..."}}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

__all__ = ["UNDELIVERABLE_KEY", "undeliverable_payload", "undeliverable_reason"]

UNDELIVERABLE_KEY: Final = "saga_undeliverable"
"""The payload key of a stand-in reply; reserved: a handler's own reply must not use it."""

_MAX_REASON_CHARS = 500


def undeliverable_payload(
    reason: str, *, size: int | None, dead_letter_id: str | None
) -> dict[str, Any]:
    """The payload of a stand-in reply.

    Args:
        reason: Why the real reply can never be sent (cut to 500 characters).
        size: The real reply's size in bytes, when known.
        dead_letter_id: The ``saga_dlt-id`` of the dead letter that holds what is left of it.
    """
    return {
        UNDELIVERABLE_KEY: {
            "reason": reason[:_MAX_REASON_CHARS],
            "bytes": size,
            "dead_letter_id": dead_letter_id,
        }
    }


def undeliverable_reason(payload: Mapping[str, Any]) -> str | None:
    """The reason a reply is a stand-in for an undeliverable one; None for a real reply."""
    marker = payload.get(UNDELIVERABLE_KEY)
    if marker is None:
        return None
    if isinstance(marker, Mapping) and isinstance(marker.get("reason"), str):
        return str(marker["reason"]) or "undeliverable"
    return "undeliverable"
