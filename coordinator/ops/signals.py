"""Sending a signal to a saga from the HTTP API or the CLI: checked, then published to Kafka.

A signal is not applied here: it goes to ``saga.signals`` like one a service sends, and the
coordinators' consumer applies it with the inbox and every rule of that path (kept for a wait
ahead, dead-lettered when refused). What is checked here is only what a caller can be told at
once: that the saga exists.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from coordinator.core.errors import SagaNotFoundError
from coordinator.core.state import SagaStatus
from coordinator.store.saga_store import SagaStore
from service_sdk.contract import SignalEnvelope, Topics, encode_headers
from service_sdk.producer import ProducerHandle
from service_sdk.signals import signal_envelope

__all__ = ["SentSignal", "SignalSender", "record_bytes"]


@dataclass(frozen=True)
class SentSignal:
    """A signal published to ``saga.signals`` (acknowledged by the broker).

    Attributes:
        saga_status: The saga's status when the signal was sent: a terminal one means the
            signal will be dead-lettered (``saga_terminal``).
    """

    signal_id: str
    saga_id: str
    name: str
    topic: str
    saga_status: SagaStatus

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready values."""
        return {
            "signal_id": self.signal_id,
            "saga_id": self.saga_id,
            "name": self.name,
            "topic": self.topic,
            "saga_status": self.saga_status.value,
        }


def record_bytes(signal: SignalEnvelope) -> int:
    """The size of the Kafka record a signal makes: body, key and headers."""
    headers = signal.headers()
    return (
        len(signal.to_bytes())
        + len(signal.key())
        + sum(len(k.encode()) + len(v.encode()) for k, v in headers.items())
    )


class SignalSender:
    """Checks that the saga exists, then publishes the signal and waits for the ack."""

    def __init__(
        self, store: SagaStore, producers: ProducerHandle, topics: Topics, *, source: str
    ) -> None:
        self._store = store
        self._producers = producers
        self._topics = topics
        self._source = source

    async def send(
        self,
        saga_id: str,
        name: str,
        payload: Mapping[str, Any] | None = None,
        *,
        message_id: str | None = None,
        traceparent: str | None = None,
    ) -> SentSignal:
        """Send signal ``name`` to saga ``saga_id``.

        Args:
            message_id: The signal's id; the same id again is applied once (default: new).

        Raises:
            SagaNotFoundError: No saga has this id.
            pydantic.ValidationError: ``name`` or ``message_id`` breaks the contract.
            Exception: The broker did not acknowledge the signal (sending it again with the
                same ``message_id`` is safe).
        """
        signal = signal_envelope(
            saga_id,
            name,
            payload,
            message_id=message_id,
            source=self._source,
            traceparent=traceparent,
        )
        async with self._store.engine.connect() as conn:
            saga = await self._store.select_saga(conn, saga_id)
        if saga is None:
            raise SagaNotFoundError(f"no saga with id {saga_id!r}", saga_id=saga_id)
        await self._producers.send_and_wait(
            self._topics.signals,
            value=signal.to_bytes(),
            key=signal.key(),
            headers=encode_headers(signal.headers()),
        )
        return SentSignal(signal.message_id, saga_id, name, self._topics.signals, saga.status)
