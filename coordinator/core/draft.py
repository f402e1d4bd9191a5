"""A transition being assembled by the engine: the state so far plus what to send and record.

Private to the engine (:mod:`coordinator.core.machine`, :mod:`coordinator.core.compensation`); pure like
them. It is mutable because it lives for one decision only; what leaves it is the frozen
:class:`~coordinator.core.state.Transition`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ValidationError

from coordinator.core.definition import RetryPolicy, SagaDefinition, Step
from coordinator.core.errors import InvalidSagaDataError, SagaDefinitionError
from coordinator.core.state import (
    Awaited,
    AwaitKind,
    ChildStart,
    CommandPurpose,
    HistoryEntry,
    HistoryKind,
    LifecycleEvent,
    LifecycleKind,
    OutgoingCommand,
    SagaInstance,
    SagaStatus,
    Transition,
    command_id_for,
    head_of,
)
from service_sdk.contract import FENCE_MESSAGE_TYPE

__all__ = ["TransitionDraft", "as_data", "awaited_timeout", "describe", "retry_policy"]

_MAX_ERROR_CHARS = 500
_FIELDS = frozenset(f.name for f in fields(SagaInstance))


@dataclass
class TransitionDraft:
    """The decision in progress for one saga and one input.

    Attributes:
        message_id: The id of the message being applied; stamped on every history entry.
    """

    definition: type[SagaDefinition[Any]]
    instance: SagaInstance
    now: datetime
    message_id: str | None = None
    commands: list[OutgoingCommand] = field(default_factory=list)
    history: list[HistoryEntry] = field(default_factory=list)
    events: list[LifecycleEvent] = field(default_factory=list)
    child_starts: list[ChildStart] = field(default_factory=list)
    rejection: str | None = None

    def update(self, **changes: Any) -> None:
        """Replace fields of the instance (which stays frozen).

        A new instance is built from the old one's fields directly: ``dataclasses.replace``
        re-runs ``__init__`` and costs ten times as much, several times per transition.
        """
        unknown = changes.keys() - _FIELDS
        if unknown:
            raise TypeError(f"SagaInstance has no field(s) {sorted(unknown)}")
        updated = object.__new__(SagaInstance)
        updated.__dict__.update(self.instance.__dict__)
        updated.__dict__.update(changes)
        self.instance = updated

    def record(self, kind: HistoryKind, step: str | None, **detail: Any) -> None:
        """Append a history entry."""
        self.history.append(HistoryEntry(kind, step, self.message_id, detail))

    def emit(self, kind: LifecycleKind, step: str | None = None, **detail: Any) -> None:
        """Append a lifecycle event."""
        self.events.append(LifecycleEvent(kind, step, detail))

    def finish(self, original: SagaInstance | None) -> Transition:
        """The transition; ``original`` is the instance before (None for a new saga)."""
        projected = self._projection(self.instance.awaiting)
        if any(getattr(self.instance, k) != v for k, v in projected.items()):
            self.update(**projected)  # the scalars follow the final status too
        changed = self.instance != original
        if changed:
            self.update(updated_at=self.now)
        instance = self.instance
        if not changed and original is not None:
            instance = original  # the very object, as Transition promises
        return Transition(
            instance,
            tuple(self.commands),
            tuple(self.history),
            tuple(self.events),
            changed,
            tuple(self.child_starts),
            self.rejection,
        )

    def data(self) -> BaseModel:
        """The saga data as its model.

        Raises:
            InvalidSagaDataError: The stored data no longer fits the data model.
        """
        try:
            return self.definition.data_model.model_validate(self.instance.data)
        except ValidationError as exc:
            raise InvalidSagaDataError(
                f"stored data does not fit {self.definition.name!r}: {describe(exc)}",
                saga_id=self.instance.saga_id,
            ) from exc

    def fold(self, step: Step[Any], payload: dict[str, Any]) -> dict[str, Any] | str:
        """The saga data with a success reply folded in, or (a str) why the reply is unusable.

        A command that declares a ``reply_model`` has its reply validated against it (unknown
        fields ignored) and ``on_success`` receives the typed reply; otherwise the payload.
        """
        reply: Any = payload
        model = step.command.reply_model
        if model is not None:
            try:
                reply = model.model_validate(payload)
            except ValidationError as exc:
                return f"invalid reply: {describe(exc)}"
        if step.on_success is None:
            return self.instance.data
        current = self.data()
        try:
            folded = self.definition.data_model.model_validate(step.on_success(current, reply))
        except Exception as exc:
            return f"invalid reply: {describe(exc)}"
        return folded.model_dump(mode="json")

    def set_awaiting(self, entries: tuple[Awaited, ...]) -> None:
        """Replace what the saga awaits; the scalar fields follow (see ``SagaInstance``)."""
        self.update(awaiting=entries, **self._projection(entries))

    def _projection(self, entries: tuple[Awaited, ...]) -> dict[str, Any]:
        """The scalar fields that describe ``entries``: the entry due first, the first undo
        (or the first command given up) of a step in doubt."""
        head = head_of(entries)
        in_doubt = next(
            (e for e in entries if e.compensates is not None or self._given_up(e)), None
        )
        return {
            "current_step": head.step if head else None,
            "command_id": head.command_id if head else None,
            "attempt": head.attempt if head else 0,
            "deadline_at": head.deadline_at if head else None,
            "service": head.service if head else None,
            "picked_up_at": head.picked_up_at if head else None,
            "in_doubt_step": in_doubt.step if in_doubt else None,
            "in_doubt_command_id": (
                (in_doubt.compensates or in_doubt.command_id) if in_doubt else None
            ),
        }

    def _given_up(self, entry: Awaited) -> bool:
        return entry.kind is AwaitKind.FORWARD and self.instance.status not in (
            SagaStatus.RUNNING,
            SagaStatus.QUEUED,
        )

    def put(self, entry: Awaited) -> None:
        """Await ``entry`` instead of whatever the saga awaited for its step."""
        entries = self.instance.awaiting
        if any(e.step == entry.step for e in entries):
            # In place: what is undone first, when several are given up, stays in step order.
            self.set_awaiting(tuple(entry if e.step == entry.step else e for e in entries))
        else:
            self.set_awaiting((*entries, entry))

    def drop(self, step: str) -> None:
        """Stop awaiting anything for ``step``."""
        self.set_awaiting(tuple(e for e in self.instance.awaiting if e.step != step))

    def send(
        self,
        step: Step[Any],
        *,
        compensation: bool,
        attempt: int,
        purpose: CommandPurpose,
        delay: timedelta = timedelta(0),
        command_id: str | None = None,
        compensates: str | None = None,
    ) -> Awaited:
        """Emit a step's command (or its compensation), built from the current data, and
        await its reply.

        Args:
            delay: Added to the timeout: the backoff spaces out deadlines.
            command_id: Re-send under this id; by default the id of the saga's current epoch.
            compensates: For the undo of a step in doubt: the forward command it settles, so
                the participant refuses that command if it has not run it yet.

        Raises:
            SagaDefinitionError: ``build`` failed or returned the wrong command type.
        """
        saga_id = self.instance.saga_id
        if compensation and step.compensation is None:
            if compensates is None:
                raise SagaDefinitionError(
                    f"{step.name} has no compensation", saga_id=saga_id, step=step.name
                )
            return self._send_fence(step, compensates, attempt, delay, command_id)
        if compensation:
            assert step.compensation is not None
            comp = step.compensation
            model, build, timeout = comp.command, comp.build, comp.timeout
        else:
            model, build, timeout = step.command, step.build, step.timeout
        command = self.build(step.name, build, model)
        if command_id is None:
            command_id = command_id_for(
                saga_id, step.name, compensation=compensation, epoch=self.instance.epoch
            )
        self.commands.append(
            OutgoingCommand(
                service=step.service,
                step=step.name,
                message_type=model.message_type,
                command_id=command_id,
                attempt=attempt,
                payload=command.model_dump(mode="json"),
                purpose=purpose,
                compensates=compensates,
            )
        )
        deadline = self.now + delay + timeout
        entry = Awaited(
            step=step.name,
            command_id=command_id,
            attempt=attempt,
            deadline_at=deadline,
            service=step.service,
            kind=AwaitKind.COMPENSATION if compensation else AwaitKind.FORWARD,
            compensates=compensates,
        )
        self.put(entry)
        self.record(
            HistoryKind.COMPENSATION_SENT if compensation else HistoryKind.COMMAND_SENT,
            step.name,
            command_id=command_id,
            attempt=attempt,
            purpose=purpose.value,
            message_type=model.message_type,
            deadline_at=deadline.isoformat(),
            **({"compensates": compensates} if compensates else {}),
        )
        return entry

    def build(self, name: str, build: Callable[[Any], Any], model: type[Any] | None) -> Any:
        """``build(data)``, checked to be a ``model`` when one is given.

        Raises:
            SagaDefinitionError: ``build`` failed or returned the wrong type.
        """
        saga_id = self.instance.saga_id
        what = model.__name__ if model is not None else "the data"
        try:
            built = build(self.data())
        except Exception as exc:
            raise SagaDefinitionError(
                f"{name}: building {what} failed: {describe(exc)}", saga_id=saga_id, step=name
            ) from exc
        if model is not None and not isinstance(built, model):
            raise SagaDefinitionError(
                f"{name}: build returned {type(built).__name__}, expected {model.__name__}",
                saga_id=saga_id,
                step=name,
            )
        return built

    def _send_fence(
        self,
        step: Step[Any],
        compensates: str,
        attempt: int,
        delay: timedelta,
        command_id: str | None,
    ) -> Awaited:
        """Undo ``step``, which has no compensation: the participant refuses its command."""
        if command_id is None:
            command_id = command_id_for(
                self.instance.saga_id, step.name, compensation=True, epoch=self.instance.epoch
            )
        self.commands.append(
            OutgoingCommand(
                service=step.service,
                step=step.name,
                message_type=FENCE_MESSAGE_TYPE,
                command_id=command_id,
                attempt=attempt,
                payload={},
                purpose=CommandPurpose.FENCE,
                compensates=compensates,
            )
        )
        deadline = self.now + delay + step.timeout
        entry = Awaited(
            step=step.name,
            command_id=command_id,
            attempt=attempt,
            deadline_at=deadline,
            service=step.service,
            kind=AwaitKind.COMPENSATION,
            compensates=compensates,
        )
        self.put(entry)
        self.record(
            HistoryKind.COMPENSATION_SENT,
            step.name,
            command_id=command_id,
            attempt=attempt,
            purpose=CommandPurpose.FENCE.value,
            message_type=FENCE_MESSAGE_TYPE,
            deadline_at=deadline.isoformat(),
            compensates=compensates,
        )
        return entry


def awaited_timeout(step: Step[Any], *, compensation: bool) -> timedelta:
    """How long a reply to a step's command (or its compensation or fence) may take."""
    if compensation and step.compensation is not None:
        return step.compensation.timeout
    return step.timeout


def retry_policy(step: Step[Any], *, compensation: bool) -> RetryPolicy:
    """The retry policy of a step's command or of its compensation."""
    if compensation and step.compensation is not None:
        return step.compensation.retry
    return step.retry


def as_data(built: Any) -> dict[str, Any]:
    """A child saga's start data as JSON-ready values (built as a pydantic model or a dict).

    Raises:
        TypeError: Neither a model nor a dict.
    """
    if isinstance(built, dict):
        return dict(built)
    if isinstance(built, BaseModel):
        return built.model_dump(mode="json")
    raise TypeError(f"a child saga's data must be a pydantic model or a dict, got {built!r}")


def describe(exc: Exception) -> str:
    """A one-line, bounded description of an error, for failure reasons and history."""
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "value"
        text = f"{exc.error_count()} validation error(s); {where}: {first['msg']}"
    else:
        text = str(exc) or type(exc).__name__
    return text[:_MAX_ERROR_CHARS]
