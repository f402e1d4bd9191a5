"""Helpers for testing a participant's handlers without Kafka.

:func:`invoke` runs a handler the way :class:`~service_sdk.runner.ServiceRunner` does: the
command travels as JSON and is validated against its model, the handler runs in a SAVEPOINT of
the given connection (a rejection undoes its writes) and the result becomes the reply
envelope the coordinator would receive::

    async def test_reserve_rejects_unknown_sku(conn: AsyncConnection) -> None:
        reply = await invoke(inventory, ReserveStock(order_id="o1", items=(...)), conn)
        assert reply.outcome is Outcome.FAILURE

What it does not do is Kafka's part (redelivery, ordering, dead-lettering) and the
processed-commands record: test those against the runner with a real broker. That includes
tombstones: :func:`invoke` runs a compensation's handler whatever its ``compensates`` says,
and a ``saga.fence`` (``command_envelope(Fence(), compensates=...)``, with
:class:`~service_sdk.service.Fence`) has no handler to invoke.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncConnection

from service_sdk.contract.envelope import (
    Command,
    Envelope,
    MessageKind,
    decode_envelope,
    new_message_id,
)
from service_sdk.service import Deferred, Service

__all__ = ["HandlerDeferredError", "command_envelope", "invoke"]


class HandlerDeferredError(AssertionError):
    """The handler returned ``ctx.defer()``, so :func:`invoke` has no reply to return.

    Attributes:
        deferred: What the handler returned.
    """

    def __init__(self, deferred: Deferred) -> None:
        super().__init__(f"the handler deferred command {deferred.command_id!r}")
        self.deferred = deferred


def command_envelope(
    command: Command,
    *,
    saga_id: str = "saga-test",
    saga_type: str = "test",
    step: str | None = None,
    attempt: int = 1,
    command_id: str | None = None,
    reply_to: str | None = None,
    traceparent: str | None = None,
    compensates: str | None = None,
) -> Envelope:
    """The envelope the coordinator would send ``command`` in.

    Args:
        command: The command's payload model.
        saga_id: The saga id (also the Kafka key).
        saga_type: The saga definition's name.
        step: The saga step.
        attempt: 1 for the first send.
        command_id: The command id; a new one when None.
        reply_to: Where the reply goes; the runner's default reply topic when None.
        traceparent: W3C trace context.
        compensates: For an undo (a compensation or a fence): the command id it undoes.
    """
    return Envelope(
        kind=MessageKind.COMMAND,
        message_type=type(command).message_type,
        source="coordinator",
        saga_id=saga_id,
        saga_type=saga_type,
        step=step,
        attempt=attempt,
        command_id=command_id or new_message_id(),
        reply_to=reply_to,
        compensates=compensates,
        payload=command.model_dump(mode="json"),
        traceparent=traceparent,
    )


async def invoke(
    service: Service,
    command: Command | Envelope,
    connection: AsyncConnection | None = None,
    *,
    saga_id: str = "saga-test",
    attempt: int = 1,
    command_id: str | None = None,
) -> Envelope:
    """Run the service's handler for ``command`` as the runner does and return the reply.

    Args:
        service: The service whose handler runs.
        command: The command model, or a full command envelope (then the keyword
            arguments are ignored).
        connection: The handler's database connection. Its writes stay in the caller's
            transaction (commit or roll back as the test needs); a rejection rolls back
            to the savepoint taken before the handler. None for handlers that do not
            touch the database.
        saga_id: The saga id of the envelope built around a model.
        attempt: Its attempt number.
        command_id: Its command id; a new one when None.

    Returns:
        The reply envelope: outcome SUCCESS with the handler's data, FAILURE or RETRYABLE
        with the rejection's reason.

    Raises:
        HandlerDeferredError: The handler returned ``ctx.defer()``.
        service_sdk.UnknownMessageTypeError: The service has no handler for the command.
        pydantic.ValidationError: The command does not survive its JSON round trip.
        Exception: Whatever else the handler raised (the runner would retry it).
    """
    envelope = (
        command
        if isinstance(command, Envelope)
        else command_envelope(command, saga_id=saga_id, attempt=attempt, command_id=command_id)
    )
    # Through bytes and back, as on the wire: a payload that only works as a Python object
    # fails here rather than in production.
    received = decode_envelope(envelope.to_bytes())
    parsed = service.parse(received)
    result = await service.dispatch(received, parsed, connection)
    if isinstance(result, Deferred):
        raise HandlerDeferredError(result)
    return result
