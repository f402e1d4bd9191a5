"""Reproducible garbage for the dead-letter tests: bad records for ``saga.replies`` and for a
participant's command topic, each with the reason its dead letter must carry.

Records are drawn with Hypothesis strategies (raw bytes, random JSON, text, and mutated valid
envelopes: dropped fields, wrong types, wrong kinds, unknown types and saga ids,
bad command payloads, ...). :func:`draw` collects them through ``@given`` with a fixed seed, so
a run is reproducible. None of them is valid by construction, and :func:`oracle` checks each
against the pure decoding the consumers do, so a draw that is accidentally processable fails
loudly here rather than as a miscount in an integration test.
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from coordinator.demo.participants import payment
from service_sdk import MalformedMessageError, MessageKind, UnknownMessageTypeError, decode_envelope

__all__ = ["Garbage", "Target", "draw", "garbage", "oracle"]

Target = Literal["replies", "commands"]
T = TypeVar("T")

_SAFE = string.ascii_letters + string.digits + "-_."
_TOPIC_NAME = re.compile(r"(?!\.{1,2}$)[A-Za-z0-9._-]{1,249}")
_WHEN = "2025-01-01T00:00:00+00:00"


@dataclass(frozen=True)
class Garbage:
    """One bad record.

    Attributes:
        target: Which topic it is for.
        mutation: What makes it bad (for messages on failure).
        key: Record key.
        value: Record body.
        headers: Record headers.
        reason: The ``saga_dlt-reason`` its dead letter must carry.
    """

    target: Target
    mutation: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    reason: str


safe_text = st.text(alphabet=_SAFE, min_size=1, max_size=24)
ghost_ids = safe_text.map(lambda s: f"ghost-{s}")
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
headers = st.lists(
    st.tuples(st.text(alphabet=_SAFE, min_size=1, max_size=16), st.binary(max_size=16)),
    max_size=3,
).map(tuple)


def _reply(saga_id: str, outcome: str, attempt: int, payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "message_id": f"m-{saga_id}",
        "kind": "reply",
        "message_type": "inventory.reserve_stock",
        "source": "garbage",
        "saga_id": saga_id,
        "saga_type": "order",
        "step": "reserve_inventory",
        "attempt": attempt,
        "command_id": f"c-{saga_id}",
        "outcome": outcome,
        "payload": payload,
        "occurred_at": _WHEN,
    }


def _command(saga_id: str) -> dict[str, Any]:
    return {
        "message_id": f"m-{saga_id}",
        "kind": "command",
        "message_type": "payment.charge_payment",
        "source": "garbage",
        "saga_id": saga_id,
        "saga_type": "order",
        "step": "charge_payment",
        "attempt": 1,
        "command_id": f"c-{saga_id}",
        "reply_to": "saga.replies",
        "payload": {
            "order_id": saga_id,
            "customer_id": "ghost",
            "amount_cents": 100,
            "currency": "EUR",
        },
        "occurred_at": _WHEN,
    }


# Values each of these envelope fields can never take.
_WRONG = {
    "kind": [5, "bogus", None, ""],
    "message_type": ["", 7, None, "x" * 201],
    "saga_id": ["", 5, None, "x" * 201],
    "saga_type": ["", [], None],
    "attempt": [0, -3, "x", 1.5, None],
    "payload": [[], "x", 3],
    "occurred_at": ["yesterday", "2025-01-01T00:00:00", []],  # (a number is a Unix time)
    "message_id": ["", 5],
    "outcome": ["maybe", 3],
    "step": [5, []],
}
_REQUIRED = ["kind", "message_type", "saga_id", "saga_type"]
# ChargePayment fields and values that fail its model (pydantic's lax mode would take "5").
_BAD_PAYLOAD = {
    "order_id": [None, 5, []],
    "customer_id": [None, 5, {}],
    "amount_cents": [0, -1, "five", None, [], 1.5],
    "currency": ["EU", "EURO", 3, None],
}


def _encoded(target: Target, mutation: str, body: dict[str, Any], reason: str) -> Garbage:
    saga_id = body.get("saga_id")
    key = saga_id.encode("utf-8", errors="replace") if isinstance(saga_id, str) else b"garbage"
    routing = (("ce_sagaid", key),) if isinstance(saga_id, str) and saga_id else ()
    value = json.dumps(body).encode()
    return Garbage(target, mutation, key or b"garbage", value, routing, reason)


@st.composite
def _raw(draw: st.DrawFn, target: Target) -> Garbage:
    kind = draw(st.sampled_from(["bytes", "json", "text", "null_value"]))
    key = draw(st.none() | st.binary(min_size=1, max_size=16))
    value: bytes | None
    if kind == "bytes":
        value = draw(st.binary(max_size=200))
    elif kind == "json":
        value = json.dumps(draw(json_values)).encode()
    elif kind == "text":
        value = draw(st.text(max_size=100)).encode()
    else:
        value, key = None, draw(st.binary(min_size=1, max_size=16))
    return Garbage(target, kind, key, value, draw(headers), "malformed")


@st.composite
def _broken_envelope(draw: st.DrawFn, target: Target) -> Garbage:
    """An envelope that no longer decodes: a dropped or mistyped field. (An unknown field is
    not garbage: the tolerant reader ignores it.)"""
    saga_id = draw(ghost_ids)
    body = _reply(saga_id, "success", 1, {}) if target == "replies" else _command(saga_id)
    how = draw(st.sampled_from(["drop", "wrong_type"]))
    if how == "drop":
        del body[draw(st.sampled_from(_REQUIRED))]
    else:
        field = draw(st.sampled_from(sorted(_WRONG)))
        body[field] = draw(st.sampled_from(_WRONG[field]))
    return _encoded(target, f"envelope_{how}", body, "malformed")


_REPLY_FAULTS = ["wrong_kind", "unknown_saga_type", "no_outcome", "unknown_saga", "unknown_saga"]


@st.composite
def _bad_reply(draw: st.DrawFn) -> Garbage:
    """A reply that decodes but cannot be applied."""
    saga_id = draw(ghost_ids)
    body = _reply(
        saga_id,
        draw(st.sampled_from(["success", "failure", "retryable"])),
        draw(st.integers(min_value=1, max_value=10**6)),
        draw(st.dictionaries(st.text(max_size=8), json_values, max_size=3)),
    )
    # A NUL makes the coordinator retry its whole batch message by message: keep it rare.
    how = draw(st.sampled_from([*_REPLY_FAULTS * 4, "nul_saga_id"]))
    reason = {
        "wrong_kind": "unexpected_kind",
        "unknown_saga_type": "unknown_saga_type",
        "no_outcome": "schema",
        "unknown_saga": "unknown_saga",
        "nul_saga_id": "processing_error",
    }[how]
    if how == "wrong_kind":
        body["kind"] = draw(st.sampled_from(["command", "event"]))
    elif how == "unknown_saga_type":
        body["saga_type"] = draw(safe_text.filter(lambda name: name != "order"))
    elif how == "no_outcome":
        if draw(st.booleans()):
            del body["outcome"]
        else:
            body["outcome"] = None
    elif how == "nul_saga_id":
        # PostgreSQL text cannot hold NUL: the database refuses the lookup.
        body["saga_id"] = f"{saga_id}\x00"
    return _encoded("replies", how, body, reason)


@st.composite
def _bad_command(draw: st.DrawFn) -> Garbage:
    """A command envelope that decodes but that the participant must refuse unrun."""
    saga_id = draw(ghost_ids)
    body = _command(saga_id)
    how = draw(
        st.sampled_from(
            ["wrong_kind", "no_command_id", "bad_reply_to", "unknown_type", "bad_payload"]
        )
    )
    reason = "unknown_type" if how == "unknown_type" else "schema"
    if how == "wrong_kind":
        body["kind"] = draw(st.sampled_from(["reply", "start", "event"]))
    elif how == "no_command_id":
        body["command_id"] = None
    elif how == "bad_reply_to":
        body["reply_to"] = draw(
            st.text(min_size=1, max_size=30).filter(lambda t: not _TOPIC_NAME.fullmatch(t))
        )
    elif how == "unknown_type":
        body["message_type"] = draw(
            safe_text.filter(lambda t: t not in payment.service.message_types)
        )
    else:
        payload = body["payload"]
        what = draw(st.sampled_from(["drop", "wrong", "refund"]))
        if what == "drop":
            del payload[draw(st.sampled_from(sorted(payload)))]
        elif what == "wrong":
            field = draw(st.sampled_from(sorted(_BAD_PAYLOAD)))
            payload[field] = draw(st.sampled_from(_BAD_PAYLOAD[field]))
        else:
            body["message_type"] = "payment.refund_payment"  # needs order_id and amount only
            del payload["amount_cents"]
        how = f"payload_{what}"
    return _encoded("commands", how, body, reason)


@st.composite
def _any(draw: st.DrawFn, target: Target) -> Garbage:
    which = draw(st.sampled_from(["raw", "broken", "specific", "specific"]))
    if which == "raw":
        return draw(_raw(target))
    if which == "broken":
        return draw(_broken_envelope(target))
    return draw(_bad_reply() if target == "replies" else _bad_command())


def garbage(target: Target) -> st.SearchStrategy[Garbage]:
    """Bad records for ``target``: a quarter raw, a quarter broken envelopes, half
    well-formed envelopes that still cannot be processed."""
    return _any(target)


def oracle(item: Garbage) -> str | None:
    """The reason the consumer of ``item.target`` gives, from its pure decoding steps; None
    when the record would be processed (garbage must never be)."""
    try:
        envelope = decode_envelope(item.value)
    except MalformedMessageError:
        return "malformed"
    if item.target == "replies":
        if envelope.kind not in (MessageKind.START, MessageKind.REPLY):
            return "unexpected_kind"
        if envelope.saga_type != "order":
            return "unknown_saga_type"
        if envelope.kind is MessageKind.START:
            return None
        if envelope.outcome is None:
            return "schema"
        return "processing_error" if "\x00" in envelope.saga_id else "unknown_saga"
    if envelope.kind is not MessageKind.COMMAND or not envelope.command_id:
        return "schema"
    if envelope.reply_to and not _TOPIC_NAME.fullmatch(envelope.reply_to):
        return "schema"
    try:
        payment.service.parse(envelope)
    except UnknownMessageTypeError:
        return "unknown_type"
    except ValidationError:
        return "schema"
    return None


def draw(strategy: st.SearchStrategy[T], count: int, at_seed: int) -> list[T]:
    """``count`` examples of ``strategy``, the same ones for the same seed."""
    drawn: list[T] = []

    @seed(at_seed)
    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(example: T) -> None:
        drawn.append(example)

    while len(drawn) < count:
        collect()
        at_seed += 1
    return drawn[:count]
