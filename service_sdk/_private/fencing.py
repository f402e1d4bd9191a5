"""Tombstones: how a participant settles a command the saga gave up on (no I/O here).

When the coordinator gives up on a forward command X that may still run (its deadline or
retries ran out, an operator aborted the saga, or its success reply was unusable), it sends an
*undo* naming X in ``compensates``: the step's compensation, or a ``saga.fence`` command for a
step without one. Commands of one saga share a key, so X's copies and its undo travel in one
partition, in order. The participant settles X for good in the undo's transaction:

=====================  ==========================================  ============================
What the record says   compensation                                fence
=====================  ==========================================  ============================
nothing (never ran)    tombstone X; answer ``{"fenced": true}``     same
fenced already         answer ``{"fenced": true}``                 same
refused (failure)      answer ``{"fenced": true}`` (nothing to      same
                       undo)
deferred (pending)     tombstone X; answer ``{"fenced": true}``;    same
                       ``complete_later(X)`` raises
                       ``CommandFencedError``
succeeded              run the compensation handler                answer ``{"fenced": false,
                                                                   "executed": "success"}``
=====================  ==========================================  ============================

Only "succeeded" runs a handler: an undo never runs a compensation for an effect that does not
exist. A tombstoned X that arrives later is refused without running its handler, with outcome
FAILURE, :data:`FENCED_ERROR` and ``{"fenced": true, "fenced_by": <undo's command id>}``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from service_sdk._private.idempotency import CommandStatus, ProcessedCommand
from service_sdk.contract.envelope import FENCE_MESSAGE_TYPE, Envelope, MessageKind, Outcome
from service_sdk.service import reply_envelope

__all__ = [
    "FENCED_ERROR",
    "Target",
    "UndoAnswer",
    "contract_error",
    "decide_undo",
    "fenced_by",
    "fences_ahead",
    "refusal",
    "target_of",
]

FENCED_ERROR = "fenced: the saga gave up on this command and undid it"
"""The error of the reply refusing a tombstoned command."""


class Target(StrEnum):
    """What the participant's record says about the command an undo names."""

    UNSEEN = "unseen"
    """No record: it never ran here (or it was rejected retryably, or dead-lettered)."""
    FENCED = "fenced"
    """A tombstone already (an earlier undo, or the batch look-ahead)."""
    PENDING = "pending"
    """Deferred and not answered yet."""
    SUCCEEDED = "succeeded"
    """Answered with success: its effect exists."""
    REFUSED = "refused"
    """Answered with a final failure: it left no effect."""


def target_of(row: ProcessedCommand | None) -> Target:
    """Classify the record of the command an undo names."""
    if row is None:
        return Target.UNSEEN
    if row.status is CommandStatus.FENCED:
        return Target.FENCED
    if row.status is CommandStatus.PENDING or row.reply is None:
        return Target.PENDING
    if row.reply.outcome is Outcome.SUCCESS:
        return Target.SUCCEEDED
    return Target.REFUSED


@dataclass(frozen=True)
class UndoAnswer:
    """An undo answered without running a handler.

    Attributes:
        payload: The success reply's payload.
        result: What the runner's observer is told (``tombstoned`` or ``unfenceable``).
    """

    payload: dict[str, Any]
    result: str


_FENCED = UndoAnswer({"fenced": True}, "tombstoned")
_UNFENCEABLE = UndoAnswer({"fenced": False, "executed": Outcome.SUCCESS.value}, "unfenceable")


def decide_undo(*, fence: bool, target: Target) -> UndoAnswer | None:
    """How to answer an undo, given what it undoes.

    Args:
        fence: The undo is a ``saga.fence`` (else a compensation with a handler).
        target: The record of the command it names (a pending one is tombstoned by the
            caller, as an unseen one is).

    Returns:
        The answer, or None when the compensation handler must run (the effect exists).
    """
    if target is not Target.SUCCEEDED:
        return _FENCED
    return _UNFENCEABLE if fence else None


def refusal(command: Envelope, source: str, fenced_by: str) -> Envelope:
    """The reply refusing a tombstoned ``command`` (recorded, and sent when it arrives)."""
    return reply_envelope(
        command,
        source,
        Outcome.FAILURE,
        payload={"fenced": True, "fenced_by": fenced_by},
        error=FENCED_ERROR,
    )


def contract_error(envelope: Envelope) -> str | None:
    """Why a command's undo fields break the contract, or None when they are fine."""
    if envelope.message_type == FENCE_MESSAGE_TYPE and not envelope.compensates:
        return "a saga.fence command without compensates"
    if envelope.compensates is not None and envelope.compensates == envelope.command_id:
        return "a command that compensates itself"
    return None


def fences_ahead(
    undos: Iterable[Envelope], understands: Callable[[str], bool]
) -> dict[str, Envelope]:
    """The look-ahead of a batch: the commands its undos name, each with its first undo.

    Args:
        undos: The batch's envelopes (any; those that are not well-formed undos of this
            service are skipped).
        understands: Whether the service answers a message type (registered or a fence).

    Returns:
        ``{command id named in compensates: the undo}``.
    """
    ahead: dict[str, Envelope] = {}
    for undo in undos:
        if (
            undo.kind is MessageKind.COMMAND
            and undo.command_id
            and undo.compensates
            and contract_error(undo) is None
            and understands(undo.message_type)
        ):
            ahead.setdefault(undo.compensates, undo)
    return ahead


def fenced_by(ahead: Mapping[str, Envelope], command: Envelope) -> Envelope | None:
    """The undo of the same batch that names ``command``, if any (same saga only)."""
    if command.command_id is None:
        return None
    undo = ahead.get(command.command_id)
    if undo is None or undo.saga_id != command.saga_id:
        return None
    return undo
