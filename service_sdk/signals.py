"""Sending a signal to a saga from a service (or any Python process with a Kafka producer).

A signal is a named event for one saga, for example a manager's ``approval``: a saga step
``WaitForSignal(signal="approval", ...)`` waits for it. The signal goes to ``saga.signals``
keyed by saga id; the coordinator applies it once per message id (a re-send with the same id
is recognised), keeps it if the saga's wait for it lies ahead, and dead-letters it otherwise.

Example::

    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:9092")
    await producer.start()
    signal_id = await send_signal(producer, order_saga_id, "approval", {"approved": True})
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from service_sdk.contract import SignalEnvelope, Topics, encode_headers
from service_sdk.producer import Producer

__all__ = ["send_signal", "signal_envelope"]


def signal_envelope(
    saga_id: str,
    name: str,
    payload: BaseModel | Mapping[str, Any] | None = None,
    *,
    message_id: str | None = None,
    source: str = "",
    traceparent: str | None = None,
) -> SignalEnvelope:
    """The signal ``name`` for saga ``saga_id``, ready to publish.

    Args:
        saga_id: The saga the signal is for.
        name: The signal's name (letters, digits and ``_ . : -``).
        payload: Its data: a pydantic model (dumped as JSON) or a mapping.
        message_id: The signal's id; give the same one when sending the same signal again
            (the coordinator applies it once). Default: a new UUID.
        source: Who sends it (your service's name).
        traceparent: W3C trace context to carry, if any.

    Raises:
        pydantic.ValidationError: An argument breaks the contract (an empty saga id, a name
            with spaces, ...).
    """
    if isinstance(payload, BaseModel):
        data = payload.model_dump(mode="json")
    else:
        data = dict(payload or {})
    fields: dict[str, Any] = {
        "saga_id": saga_id,
        "name": name,
        "payload": data,
        "source": source,
        "traceparent": traceparent,
    }
    if message_id is not None:
        fields["message_id"] = message_id
    return SignalEnvelope(**fields)


async def send_signal(
    producer: Producer,
    saga_id: str,
    name: str,
    payload: BaseModel | Mapping[str, Any] | None = None,
    *,
    topics: Topics | None = None,
    message_id: str | None = None,
    source: str = "",
    traceparent: str | None = None,
) -> str:
    """Publish a signal to ``saga.signals`` and wait for the broker's acknowledgement.

    Args:
        producer: A started Kafka producer (``aiokafka.AIOKafkaProducer`` will do).
        topics: The deployment's topic names (its prefix); default: no prefix.
        saga_id, name, payload, message_id, source, traceparent: See :func:`signal_envelope`.

    Returns:
        The signal's message id (the id its dead letter or history entry will carry).

    Raises:
        KafkaError: The broker did not acknowledge it. Sending it again is safe when you
            chose its ``message_id``: the coordinator applies one id once.
    """
    signal = signal_envelope(
        saga_id, name, payload, message_id=message_id, source=source, traceparent=traceparent
    )
    delivery = await producer.send(
        (topics or Topics()).signals,
        value=signal.to_bytes(),
        key=signal.key(),
        headers=encode_headers(signal.headers()),
    )
    await delivery
    return signal.message_id
