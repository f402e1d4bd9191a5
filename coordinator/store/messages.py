"""Turning engine decisions into Kafka messages (as outbox rows)."""

from __future__ import annotations

from datetime import datetime

from coordinator.core.state import LifecycleEvent, OutgoingCommand, SagaInstance
from coordinator.store.records import OutboxMessage
from service_sdk.contract import Envelope, MessageKind, Topics

__all__ = ["COORDINATOR_SOURCE", "command_message", "event_message"]

COORDINATOR_SOURCE = "saga-coordinator"


def _outbox(topic: str, envelope: Envelope) -> OutboxMessage:
    return OutboxMessage(
        saga_id=envelope.saga_id,
        topic=topic,
        key=envelope.key(),
        value=envelope.to_bytes(),
        headers=envelope.headers(),
        message_id=envelope.message_id,
    )


def command_message(
    topics: Topics, instance: SagaInstance, command: OutgoingCommand, now: datetime
) -> OutboxMessage:
    """The outbox row that sends ``command`` to its participant's command topic."""
    envelope = Envelope(
        kind=MessageKind.COMMAND,
        message_type=command.message_type,
        source=COORDINATOR_SOURCE,
        saga_id=instance.saga_id,
        saga_type=instance.saga_type,
        step=command.step,
        attempt=command.attempt,
        command_id=command.command_id,
        reply_to=topics.replies,
        compensates=command.compensates,
        payload=command.payload,
        occurred_at=now,
        traceparent=instance.traceparent,
    )
    return _outbox(topics.commands(command.service), envelope)


def event_message(
    topics: Topics, instance: SagaInstance, event: LifecycleEvent, now: datetime
) -> OutboxMessage:
    """The outbox row that publishes a lifecycle event to the events topic."""
    envelope = Envelope(
        kind=MessageKind.EVENT,
        message_type=event.kind.value,
        source=COORDINATOR_SOURCE,
        saga_id=instance.saga_id,
        saga_type=instance.saga_type,
        step=event.step,
        payload={"status": instance.status.value, **event.detail},
        occurred_at=now,
        traceparent=instance.traceparent,
    )
    return _outbox(topics.events, envelope)
