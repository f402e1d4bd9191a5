"""Participants' replies, built the way the SDK builds them.

A test playing a participant answers a command with :func:`participant_reply`, which calls
the SDK's own :func:`service_sdk.service.reply_envelope`: the reply carries exactly what a
real participant's would (saga id and type, step, attempt, command id, message type, trace
context, a fresh message id), so a change to the SDK's replies reaches these tests too. Build
an :class:`~service_sdk.Envelope` by hand only for a reply that is meant to be odd, and say so.
"""

from __future__ import annotations

from typing import Any

from service_sdk import Envelope, Outcome
from service_sdk.service import reply_envelope

__all__ = ["participant_reply"]


def participant_reply(
    command: Envelope,
    outcome: Outcome = Outcome.SUCCESS,
    payload: dict[str, Any] | None = None,
    *,
    error: str | None = None,
    source: str = "test",
) -> Envelope:
    """The reply a participant named ``source`` sends to ``command``.

    Args:
        command: The command envelope as read from the participant's command topic.
        outcome: Success, failure (compensate) or retryable (send again).
        payload: The reply's data (the step's result model, as JSON); empty when None.
        error: Why the command failed, for a failure or retryable outcome.
        source: The participant's service name.
    """
    return reply_envelope(command, source, outcome, payload=payload or {}, error=error)
