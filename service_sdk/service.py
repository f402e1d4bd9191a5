"""The declaration of a participant service and its command handlers.

A service is an instance; handlers are registered on it with a decorator and validated when
the module is imported::

    inventory = Service("inventory", schema="inventory")

    @inventory.handles(ReserveStock)
    async def reserve(cmd: ReserveStock, ctx: HandlerContext) -> StockReserved:
        await ctx.connection.execute(...)
        return StockReserved(reservation_id=...)

A handler returns its success reply (a pydantic model, a mapping or None), raises
:class:`~service_sdk.errors.CommandRejected` to refuse the command, or returns
``ctx.defer()`` to answer later through the runner. Any other exception is retried by the
runner and then dead-lettered.

A batch handler (``handles_batch``) answers many commands of one type with a few statements
for all of them, when a busy service's per-command round trips are what it waits for::

    @payment.handles_batch(ChargePayment)
    async def charge(cmds: Sequence[ChargePayment], ctx: BatchContext) -> list[BatchResult]:
        ...  # one statement for the batch, on ctx.connection
        return [PaymentCharged(...) if ok else CommandRejected("card declined") for ...]

It returns one result per command, in order: what a handler returns, or a
:class:`~service_sdk.errors.CommandRejected` *instance* for a refused command, for which it
must have written nothing. If it raises, the runner answers the commands again one at a
time, each in a SAVEPOINT (the batch handler called with one command), so one bad command
fails alone.

Every service also understands ``saga.fence`` (:data:`~service_sdk.contract.FENCE_MESSAGE_TYPE`)
without a handler: the coordinator sends it to undo a step that has no compensation, and the
runner answers it from the processed-commands record (see :mod:`service_sdk.runner`). It
cannot be registered. Likewise, a compensation naming the command it undoes in
``compensates`` runs its handler only when that command took effect here.
"""

from __future__ import annotations

import contextlib
import inspect
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias, TypeVar

from pydantic import BaseModel, ConfigDict
from sqlalchemy.ext.asyncio import AsyncConnection

from service_sdk.contract.envelope import (
    FENCE_MESSAGE_TYPE,
    Command,
    Envelope,
    MessageKind,
    Outcome,
    new_message_id,
)
from service_sdk.errors import CommandRejected, HandlerRegistrationError, UnknownMessageTypeError

__all__ = [
    "BatchContext",
    "BatchHandler",
    "BatchResult",
    "CommandHandler",
    "Deferred",
    "Fence",
    "HandlerContext",
    "HandlerResult",
    "Registration",
    "Service",
]

C = TypeVar("C", bound=Command)

_SERVICE_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


class Fence(Command):
    """The payload of a ``saga.fence`` command: empty (unknown fields are ignored).

    Every :class:`Service` understands it without a handler; the runner answers it.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    message_type: ClassVar[str] = FENCE_MESSAGE_TYPE


@dataclass(frozen=True)
class Deferred:
    """Returned by a handler (via :meth:`HandlerContext.defer`) that answers later.

    The runner records the command as pending; the service finishes it with
    ``ServiceRunner.complete_later`` or ``ServiceRunner.reject_later``.

    Attributes:
        command_id: The id to pass to ``complete_later`` / ``reject_later``.
    """

    command_id: str


HandlerResult: TypeAlias = BaseModel | Mapping[str, Any] | Deferred | None
"""What a handler may return: the success reply's data, or :class:`Deferred`."""

CommandHandler: TypeAlias = Callable[[C, "HandlerContext"], Awaitable[HandlerResult]]
"""An ``async def handler(command, ctx)``."""

BatchResult: TypeAlias = HandlerResult | CommandRejected
"""One command's result from a batch handler: a handler's result, or a refusal."""

BatchHandler: TypeAlias = Callable[[Sequence[C], "BatchContext"], Awaitable[Sequence[BatchResult]]]
"""An ``async def handler(commands, ctx)`` returning one result per command, in order."""


class HandlerContext:
    """What a handler knows besides its command.

    Args:
        connection: The service's database connection, inside the transaction that also
            records the command as processed; None only in unit tests without a database.
        envelope: The command's envelope.
        service: The service the handler belongs to.
    """

    def __init__(
        self, *, connection: AsyncConnection | None, envelope: Envelope, service: Service
    ) -> None:
        self._connection = connection
        self.envelope = envelope
        self.service = service

    @property
    def connection(self) -> AsyncConnection:
        """The connection; the handler's writes commit together with the processed record.

        Raises:
            RuntimeError: The handler runs without a database (a unit test that passed
                no connection).
        """
        if self._connection is None:
            raise RuntimeError(
                f"handler of {self.envelope.message_type!r} needs a database connection; "
                "pass connection= to service_sdk.testing.invoke"
            )
        return self._connection

    @property
    def saga_id(self) -> str:
        """The saga the command belongs to."""
        return self.envelope.saga_id

    @property
    def command_id(self) -> str:
        """The command's id, the same on every re-send."""
        return self.envelope.command_id or self.envelope.message_id

    @property
    def attempt(self) -> int:
        """1 for the first send, +1 for every re-send by the coordinator."""
        return self.envelope.attempt

    @property
    def step(self) -> str | None:
        """The saga step the command belongs to."""
        return self.envelope.step

    def defer(self) -> Deferred:
        """Answer later: return this from the handler; its writes still commit."""
        return Deferred(command_id=self.command_id)


class BatchContext:
    """What a batch handler knows besides its commands.

    Attributes:
        commands: Each command's own context (saga id, command id, attempt, ``defer()``),
            in the order of the commands.
    """

    def __init__(self, commands: Sequence[HandlerContext]) -> None:
        self.commands = list(commands)

    @property
    def connection(self) -> AsyncConnection:
        """The connection; the handler's writes commit together with the processed records.

        Raises:
            RuntimeError: The handler runs without a database (a unit test).
        """
        return self.commands[0].connection


@dataclass(frozen=True)
class Registration:
    """A command model and the handler registered for it.

    Attributes:
        model: The command's payload model.
        handler: The coroutine function handling it.
    """

    model: type[Command]
    handler: Callable[[Any, HandlerContext], Awaitable[HandlerResult]]
    batch: Callable[[Any, BatchContext], Awaitable[Sequence[BatchResult]]] | None = None
    """The batch handler, when the commands are answered many at a time (then ``handler``
    calls it with one command)."""


class Service:
    """A participant service: its name, its database schema and its command handlers.

    Args:
        name: The service's name; it consumes ``<prefix><name>.commands`` and signs its
            replies with it (lowercase letters, digits, ``_`` and ``-``).
        schema: The PostgreSQL schema that holds the service's processed-commands record;
            defaults to the name with ``-`` replaced by ``_``.

    Raises:
        HandlerRegistrationError: The name or schema is not valid.
    """

    def __init__(self, name: str, *, schema: str | None = None) -> None:
        if not _SERVICE_NAME.fullmatch(name):
            raise HandlerRegistrationError(
                f"service name {name!r} must match {_SERVICE_NAME.pattern}"
            )
        resolved = schema if schema is not None else name.replace("-", "_")
        if not _SCHEMA_NAME.fullmatch(resolved):
            raise HandlerRegistrationError(
                f"schema {resolved!r} of service {name!r} must match {_SCHEMA_NAME.pattern}"
            )
        self.name = name
        self.schema = resolved
        self._registrations: dict[str, Registration] = {}

    def __repr__(self) -> str:
        return f"Service({self.name!r}, schema={self.schema!r})"

    def handles(self, model: type[C]) -> Callable[[CommandHandler[C]], CommandHandler[C]]:
        """Register the decorated coroutine function as the handler of ``model``.

        Args:
            model: A :class:`~service_sdk.contract.envelope.Command` subclass with a ``message_type``.

        Raises:
            HandlerRegistrationError: ``model`` is not a Command subclass, has no
                ``message_type`` or already has a handler, is ``saga.fence`` (answered by
                the SDK itself), or the handler is not an ``async def``.
        """
        message_type = self._registrable(model)

        def register(handler: CommandHandler[C]) -> CommandHandler[C]:
            self._register(message_type, Registration(model=model, handler=handler))
            return handler

        return register

    def handles_batch(self, model: type[C]) -> Callable[[BatchHandler[C]], BatchHandler[C]]:
        """Register the decorated coroutine function as the batch handler of ``model``.

        The runner passes it the commands of ``model`` that arrived together (consecutive in
        a partition's batch, claimed as new), and it returns one result per command; see the
        module's docstring.

        Raises:
            HandlerRegistrationError: As for :meth:`handles`.
        """
        message_type = self._registrable(model)

        def register(batch: BatchHandler[C]) -> BatchHandler[C]:
            async def one(command: C, ctx: HandlerContext) -> HandlerResult:
                results = await batch([command], BatchContext([ctx]))
                result = _one_result(message_type, results, 1)[0]
                if isinstance(result, CommandRejected):
                    raise result
                return result

            one.__qualname__ = getattr(batch, "__qualname__", message_type)
            self._register(message_type, Registration(model=model, handler=one, batch=batch))
            return batch

        return register

    def _registrable(self, model: type[Command]) -> str:
        """The message type of ``model``, checked to be one a handler may be added for."""
        if not (isinstance(model, type) and issubclass(model, Command)):
            raise HandlerRegistrationError(f"{model!r} is not a service_sdk.Command subclass")
        message_type = model.message_type
        if not isinstance(message_type, str) or not message_type:
            raise HandlerRegistrationError(f"{model.__qualname__} has no message_type")
        if message_type == FENCE_MESSAGE_TYPE:
            raise HandlerRegistrationError(
                f"{FENCE_MESSAGE_TYPE!r} is answered by the SDK itself; it takes no handler"
            )
        if message_type in self._registrations:
            existing = self._registrations[message_type].handler
            raise HandlerRegistrationError(
                f"{self.name}: {message_type!r} is already handled by "
                f"{getattr(existing, '__qualname__', existing)!r}"
            )
        return message_type

    def _register(self, message_type: str, registration: Registration) -> None:
        handler = registration.batch or registration.handler
        if not inspect.iscoroutinefunction(handler):
            raise HandlerRegistrationError(
                f"handler {getattr(handler, '__qualname__', handler)!r} of "
                f"{message_type!r} must be an async def"
            )
        if message_type in self._registrations:
            raise HandlerRegistrationError(f"{self.name}: {message_type!r} handled twice")
        self._registrations[message_type] = registration

    @property
    def message_types(self) -> frozenset[str]:
        """The command types this service has handlers for (``saga.fence`` is not one)."""
        return frozenset(self._registrations)

    def understands(self, message_type: str) -> bool:
        """Whether the service answers ``message_type``: a registered one, or ``saga.fence``."""
        return message_type == FENCE_MESSAGE_TYPE or message_type in self._registrations

    def __iter__(self) -> Iterator[Registration]:
        return iter(self._registrations.values())

    def registration(self, message_type: str) -> Registration:
        """The registration of ``message_type``.

        Raises:
            UnknownMessageTypeError: No handler is registered for it.
        """
        try:
            return self._registrations[message_type]
        except KeyError:
            raise UnknownMessageTypeError(
                f"service {self.name!r} has no handler for {message_type!r}"
            ) from None

    def parse(self, envelope: Envelope) -> Command:
        """Validate a command envelope's payload against the registered model.

        A ``saga.fence`` parses as :class:`Fence`.

        Raises:
            UnknownMessageTypeError: No handler is registered for the message type.
            pydantic.ValidationError: The payload does not fit the model.
        """
        if envelope.message_type == FENCE_MESSAGE_TYPE:
            return Fence.model_validate(envelope.payload)
        return self.registration(envelope.message_type).model.model_validate(envelope.payload)

    async def dispatch(
        self,
        envelope: Envelope,
        command: Command,
        connection: AsyncConnection | None,
        *,
        isolated: bool = True,
    ) -> Envelope | Deferred:
        """Run the handler for one command and turn its outcome into a reply.

        This is the step the runner and :mod:`service_sdk.testing` share; services do not
        call it. The handler runs inside a SAVEPOINT of ``connection``, so a rejection
        undoes its writes while the caller's transaction goes on. With ``isolated=False``
        it runs without one (two round trips fewer) and a rejection is raised as
        ``CommandRejected``: the caller then rolls back the whole transaction.

        Returns:
            The reply envelope (success, failure or retryable), or :class:`Deferred`.

        Raises:
            TypeError: The command is a ``saga.fence``: it has no handler, the runner answers
                it from the processed-commands record.
            Exception: Whatever the handler raised other than ``CommandRejected``, or the
                error of making its result a reply; its writes are rolled back to the
                savepoint.
        """
        if envelope.message_type == FENCE_MESSAGE_TYPE:
            raise TypeError(
                f"{FENCE_MESSAGE_TYPE!r} has no handler: ServiceRunner answers it from the "
                "processed-commands record"
            )
        handler = self.registration(envelope.message_type).handler
        ctx = HandlerContext(connection=connection, envelope=envelope, service=self)
        if not isolated:
            return self._answer(envelope, await handler(command, ctx))
        try:
            if connection is None:
                return self._answer(envelope, await handler(command, ctx))
            # The reply is made inside the savepoint too: a result that cannot be a reply
            # takes the handler's writes with it, like any error of the handler.
            async with _savepoint(connection):
                return self._answer(envelope, await handler(command, ctx))
        except CommandRejected as rejected:
            return self._refusal(envelope, rejected)

    def batched(self, message_type: str) -> bool:
        """Whether ``message_type`` has a batch handler (see :meth:`dispatch_many`)."""
        registration = self._registrations.get(message_type)
        return registration is not None and registration.batch is not None

    async def dispatch_many(
        self,
        envelopes: Sequence[Envelope],
        commands: Sequence[Command],
        connection: AsyncConnection | None,
    ) -> list[Envelope | Deferred]:
        """Run the batch handler of the commands' one type (no savepoint) and turn each
        result into a reply.

        Raises:
            TypeError: The type has no batch handler, or the handler returned a wrong number
                of results.
            Exception: Whatever the handler raised; its writes are the caller's to roll back.
        """
        message_type = envelopes[0].message_type
        batch = self.registration(message_type).batch
        if batch is None or any(e.message_type != message_type for e in envelopes):
            raise TypeError(f"{self.name}: no batch handler answers all of these commands")
        contexts = [
            HandlerContext(connection=connection, envelope=e, service=self) for e in envelopes
        ]
        results = _one_result(
            message_type, await batch(commands, BatchContext(contexts)), len(envelopes)
        )
        return [
            self._refusal(envelope, result)
            if isinstance(result, CommandRejected)
            else self._answer(envelope, result)
            for envelope, result in zip(envelopes, results, strict=True)
        ]

    def _refusal(self, envelope: Envelope, rejected: CommandRejected) -> Envelope:
        outcome = Outcome.RETRYABLE if rejected.retryable else Outcome.FAILURE
        return reply_envelope(
            envelope, self.name, outcome, payload=dict(rejected.data), error=rejected.reason
        )

    def _answer(self, envelope: Envelope, result: Any) -> Envelope | Deferred:
        if isinstance(result, Deferred):
            return result
        return reply_envelope(envelope, self.name, Outcome.SUCCESS, payload=reply_payload(result))


def _one_result(message_type: str, results: Sequence[BatchResult], n: int) -> Sequence[BatchResult]:
    """``results``, checked to be one per command."""
    if isinstance(results, (str, bytes, Mapping)) or len(results) != n:
        raise TypeError(
            f"the batch handler of {message_type!r} returned {results!r} for {n} commands; "
            "it returns one result per command, in order"
        )
    return results


_SAVEPOINT = "saga_sdk_handler"


@contextlib.asynccontextmanager
async def _savepoint(connection: AsyncConnection) -> AsyncIterator[None]:
    """A SAVEPOINT of one fixed name, released or rolled back before the next is taken.

    SQLAlchemy's ``begin_nested`` numbers its savepoints (``sa_savepoint_1``, ``_2``, ...), so
    in a transaction answering a batch of commands every savepoint statement has a new text:
    asyncpg prepares each (a round trip) and PostgreSQL parses each. These three texts are
    prepared once per connection. A handler's own ``begin_nested`` still works inside it.
    """
    await connection.exec_driver_sql(f"SAVEPOINT {_SAVEPOINT}")
    try:
        yield
    except BaseException:
        await connection.exec_driver_sql(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}")
        await connection.exec_driver_sql(f"RELEASE SAVEPOINT {_SAVEPOINT}")
        raise
    await connection.exec_driver_sql(f"RELEASE SAVEPOINT {_SAVEPOINT}")


def reply_payload(result: BaseModel | Mapping[str, Any] | None) -> dict[str, Any]:
    """A handler's success value as a reply payload."""
    if result is None:
        return {}
    if isinstance(result, BaseModel):
        return result.model_dump(mode="json")
    if isinstance(result, Mapping):
        return dict(result)
    raise TypeError(
        f"a handler returns a pydantic model, a mapping, None or ctx.defer(), not {result!r}"
    )


def reply_envelope(
    command: Envelope,
    source: str,
    outcome: Outcome,
    *,
    payload: dict[str, Any],
    error: str | None = None,
) -> Envelope:
    """The reply to ``command``, with a new message id.

    It carries the command's saga id, saga type, step, attempt, command id and trace
    context, and the command's message type.
    """
    return Envelope(
        message_id=new_message_id(),
        kind=MessageKind.REPLY,
        message_type=command.message_type,
        source=source,
        saga_id=command.saga_id,
        saga_type=command.saga_type,
        step=command.step,
        attempt=command.attempt,
        command_id=command.command_id,
        outcome=outcome,
        error=error,
        payload=payload,
        traceparent=command.traceparent,
    )
