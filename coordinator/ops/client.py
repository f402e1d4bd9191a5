"""Starting sagas: from Python (in the coordinator's process) or as a Kafka start request."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from coordinator.core.errors import (
    ConflictingStartError,
    InvalidSagaDataError,
    SagaError,
    UnknownSagaTypeError,
)
from coordinator.runtime.processor import BatchProcessor
from service_sdk.contract import DeadLetterReason, Envelope, MessageKind

__all__ = ["SagaClient", "start_request"]


def start_request(
    saga_type: str,
    data: BaseModel | Mapping[str, Any],
    *,
    saga_id: str | None = None,
    source: str = "python-api",
    traceparent: str | None = None,
) -> Envelope:
    """The envelope that asks the coordinator to start a saga.

    Publish it to ``saga.requests`` keyed by saga id (``envelope.key()``), or pass it to
    :meth:`SagaClient.start`. Starting the same saga id twice starts it once.
    """
    payload = data.model_dump(mode="json") if isinstance(data, BaseModel) else dict(data)
    return Envelope(
        kind=MessageKind.START,
        message_type=f"{saga_type}.start",
        source=source,
        saga_id=saga_id or str(uuid.uuid4()),
        saga_type=saga_type,
        payload=payload,
        traceparent=traceparent,
    )


class SagaClient:
    """Starts sagas directly through the coordinator's processor (same transaction rules)."""

    def __init__(self, processor: BatchProcessor) -> None:
        self._processor = processor

    async def start(
        self,
        saga_type: str,
        data: BaseModel | Mapping[str, Any],
        *,
        saga_id: str | None = None,
        traceparent: str | None = None,
    ) -> str:
        """Start a saga and return its id; a saga id that already exists is not started again
        (the same data again is a no-op, other data is refused).

        Raises:
            UnknownSagaTypeError: No definition is registered under ``saga_type``.
            InvalidSagaDataError: ``data`` does not fit the definition's data model.
            ConflictingStartError: ``saga_id`` exists already, started with other data.
        """
        envelope = start_request(saga_type, data, saga_id=saga_id, traceparent=traceparent)
        outcome = await self._processor.process([envelope])
        for rejection in outcome.rejections:
            if isinstance(rejection.error, ConflictingStartError):
                raise rejection.error
            if rejection.reason == DeadLetterReason.UNKNOWN_SAGA_TYPE:
                raise UnknownSagaTypeError(str(rejection.error), saga_id=envelope.saga_id)
            if isinstance(rejection.error, InvalidSagaDataError):
                raise rejection.error
            raise SagaError(str(rejection.error), saga_id=envelope.saga_id)
        return envelope.saga_id
