"""The API saga authors use to declare a saga: steps, compensations, timeouts and retries.

A definition is a class; it is validated when the class is created, so a wrong definition
fails at import, not at the first message::

    class OrderSaga(SagaDefinition[OrderData]):
        name = "order"
        version = 1
        data_model = OrderData
        steps = (
            Step(
                name="reserve_inventory",
                service="inventory",
                command=ReserveStock,
                build=lambda d: ReserveStock(order_id=d.order_id, items=d.items),
                on_success=lambda d, reply: d.model_copy(update={"reservation_id": reply["id"]}),
                compensation=Compensation(ReleaseStock, lambda d: ReleaseStock(...)),
            ),
            ...,
        )
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel

from coordinator.core.errors import (
    SagaDefinitionError,
    UnknownSagaTypeError,
    UnknownSagaVersionError,
)
from service_sdk.contract import Command

__all__ = [
    "ChildCompensation",
    "ChildSaga",
    "Compensation",
    "Parallel",
    "RetryPolicy",
    "SagaDefinition",
    "SagaRegistry",
    "Stage",
    "Step",
    "Timer",
    "Unit",
    "WaitForSignal",
    "unknown_fields",
]

D = TypeVar("D", bound=BaseModel)

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_SERVICE = re.compile(r"^[a-z][a-z0-9_-]*$")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how fast a command is sent again when no reply arrives in time.

    Attributes:
        max_attempts: Total sends, the first included (1 means no retry).
        initial_backoff: Wait before the second send.
        max_backoff: Cap on the wait.
        multiplier: Growth of the wait per attempt.
        jitter: Fraction of the wait that is randomised (0 to 1), to spread retries.
    """

    max_attempts: int = 3
    initial_backoff: timedelta = timedelta(seconds=1)
    max_backoff: timedelta = timedelta(seconds=60)
    multiplier: float = 2.0
    jitter: float = 0.2

    def backoff(self, attempt: int, random_unit: float) -> timedelta:
        """The wait before sending attempt ``attempt + 1``.

        Args:
            attempt: The attempt that just timed out (1-based).
            random_unit: A number in [0, 1) supplied by the caller, keeping this pure.
        """
        base = self.initial_backoff.total_seconds() * self.multiplier ** max(attempt - 1, 0)
        capped = min(base, self.max_backoff.total_seconds())
        spread = capped * self.jitter
        return timedelta(seconds=max(capped - spread + 2 * spread * random_unit, 0.0))

    def validate(self, where: str) -> None:
        """Raise :class:`SagaDefinitionError` if the policy is not usable."""
        if self.max_attempts < 1:
            raise SagaDefinitionError(f"{where}: retry.max_attempts must be >= 1")
        if self.initial_backoff < timedelta(0) or self.max_backoff < self.initial_backoff:
            raise SagaDefinitionError(f"{where}: retry backoffs must satisfy 0 <= initial <= max")
        if self.multiplier < 1.0:
            raise SagaDefinitionError(f"{where}: retry.multiplier must be >= 1")
        if not 0.0 <= self.jitter <= 1.0:
            raise SagaDefinitionError(f"{where}: retry.jitter must be within [0, 1]")


@dataclass(frozen=True)
class Compensation(Generic[D]):
    """The command that undoes a completed step.

    Attributes:
        command: The compensating command's model.
        build: Builds the command from the saga data.
        timeout: How long to wait for the participant's reply to each send.
        retry: Compensations retry longer by default: giving up means an operator is needed.
    """

    command: type[Command]
    build: Callable[[D], Command]
    timeout: timedelta = timedelta(seconds=30)
    retry: RetryPolicy = field(default_factory=lambda: RetryPolicy(max_attempts=5))


@dataclass(frozen=True)
class Step(Generic[D]):
    """One step of a saga: a command to a participant service and what its reply means.

    Attributes:
        name: Unique within the saga (``[a-z][a-z0-9_]*``).
        service: The participant; its commands go to ``<service>.commands``.
        command: The command's model.
        build: Builds the command from the saga data.
        on_success: Folds a success reply into the saga data: it receives the reply as the
            command's ``reply_model`` when the command declares one, else the payload mapping.
        compensation: How to undo the step once it succeeded; None if nothing to undo.
        timeout: How long to wait for a reply to each send.
        retry: How often to re-send when no reply arrives in time.
    """

    name: str
    service: str
    command: type[Command]
    build: Callable[[D], Command]
    on_success: Callable[[D, Any], D] | None = None
    compensation: Compensation[D] | None = None
    timeout: timedelta = timedelta(seconds=30)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    run_if: Callable[[D], bool] | None = None
    """A pure predicate over the saga data: False skips the step (no command, nothing to
    compensate; the history says ``step_skipped``)."""


@dataclass(frozen=True)
class Parallel(Generic[D]):
    """Steps whose commands are sent together; the saga moves on once all of them succeeded.

    When one fails for good, the members still in flight are fenced like a step in doubt
    (their compensation, or a fence, names the command), every member that succeeded is
    compensated, then the earlier stages in reverse.

    Attributes:
        name: Unique within the saga, like the names of the steps.
        steps: Two or more plain steps; each keeps its own timeout and retries.
        run_if: False skips the whole group.
    """

    name: str
    steps: tuple[Step[D], ...]
    run_if: Callable[[D], bool] | None = None


@dataclass(frozen=True)
class WaitForSignal(Generic[D]):
    """A step that sends nothing and waits for the named signal for this saga.

    Attributes:
        signal: The signal's name (``[a-z][a-z0-9_]*``).
        timeout: How long to wait from the moment the wait begins.
        payload_model: Validates the signal's payload; an invalid one is rejected.
        on_signal: Folds the payload (as ``payload_model`` when given) into the saga data.
        on_timeout: ``"fail"``: the step fails and the saga compensates; ``"continue"``: the
            step ends as succeeded by default and the saga goes on.
        run_if: False skips the wait.
    """

    name: str
    signal: str
    timeout: timedelta
    payload_model: type[BaseModel] | None = None
    on_signal: Callable[[D, Any], D] | None = None
    on_timeout: Literal["fail", "continue"] = "fail"
    run_if: Callable[[D], bool] | None = None


@dataclass(frozen=True)
class Timer(Generic[D]):
    """A durable timer: the saga waits a duration, or until a time, computed from its data.

    Exactly one of ``delay`` and ``until``. The fire time is the saga's deadline in
    PostgreSQL, so the timer survives restarts. Nothing to compensate.
    """

    name: str
    delay: Callable[[D], timedelta] | None = None
    until: Callable[[D], datetime] | None = None
    run_if: Callable[[D], bool] | None = None


@dataclass(frozen=True)
class ChildCompensation(Generic[D]):
    """How to undo a COMPLETED child saga: start another saga (its COMPLETED is the undo)."""

    saga_type: str
    build: Callable[[D], BaseModel | dict[str, Any]]
    timeout: timedelta = timedelta(hours=1)


@dataclass(frozen=True)
class ChildSaga(Generic[D]):
    """A step that starts another registered saga and waits for its end.

    COMPLETED is the step's success (``on_success`` receives the child's final data);
    COMPENSATED or FAILED is its failure. The child's saga id is the command id the parent
    awaits (:func:`~coordinator.core.state.command_id_for`).

    Attributes:
        saga_type: The child's saga type, registered in the same registry.
        build: The child's start data.
        compensation: Starts the saga that undoes a COMPLETED child; None: nothing to undo.
        timeout: How long to wait for the child's end before starting it again (a duplicate
            start changes nothing, or re-sends the end of a child that has ended).
    """

    name: str
    saga_type: str
    build: Callable[[D], BaseModel | dict[str, Any]]
    on_success: Callable[[D, dict[str, Any]], D] | None = None
    compensation: ChildCompensation[D] | None = None
    timeout: timedelta = timedelta(hours=1)
    run_if: Callable[[D], bool] | None = None


Unit = Step[D] | WaitForSignal[D] | Timer[D] | ChildSaga[D]
"""Something one command (or one wait) stands for: what the saga awaits, by name."""

Stage = Step[D] | Parallel[D] | WaitForSignal[D] | Timer[D] | ChildSaga[D]
"""One element of :attr:`SagaDefinition.steps`."""

_UNITS = (Step, WaitForSignal, Timer, ChildSaga)


def unknown_fields(model: type[BaseModel], data: Mapping[str, Any]) -> tuple[str, ...]:
    """The top-level keys of ``data`` that ``model`` does not define (by name or alias)."""
    known: set[str] = set()
    for name, info in model.model_fields.items():
        known.add(name)
        if info.alias:
            known.add(info.alias)
        if isinstance(info.validation_alias, str):
            known.add(info.validation_alias)
    if model.model_config.get("extra") == "allow":
        return ()
    return tuple(sorted(key for key in data if key not in known))


def _check_command(model: object, where: str) -> None:
    if not (isinstance(model, type) and issubclass(model, Command)):
        raise SagaDefinitionError(f"{where}: must be a service_sdk.Command subclass, got {model!r}")
    if not model.message_type:
        raise SagaDefinitionError(f"{where}: {model.__name__} has no message_type")
    reply = model.reply_model
    if reply is not None and not (isinstance(reply, type) and issubclass(reply, BaseModel)):
        raise SagaDefinitionError(
            f"{where}: {model.__name__}.reply_model must be a pydantic model, got {reply!r}"
        )


def _check_predicate(value: object, where: str) -> None:
    if value is not None and not callable(value):
        raise SagaDefinitionError(f"{where}: run_if must be callable")


def _check_step(step: Step[Any], at: str) -> None:
    if not _SERVICE.match(step.service):
        raise SagaDefinitionError(f"{at}: service must match {_SERVICE.pattern}")
    _check_command(step.command, f"{at}.command")
    if not callable(step.build):
        raise SagaDefinitionError(f"{at}: build must be callable")
    if step.on_success is not None and not callable(step.on_success):
        raise SagaDefinitionError(f"{at}: on_success must be callable")
    if step.timeout <= timedelta(0):
        raise SagaDefinitionError(f"{at}: timeout must be positive")
    step.retry.validate(at)
    comp = step.compensation
    if comp is not None:
        if not isinstance(comp, Compensation):
            raise SagaDefinitionError(
                f"{at}: compensation must be a Compensation, got {type(comp).__name__}"
            )
        _check_command(comp.command, f"{at}.compensation.command")
        if not callable(comp.build):
            raise SagaDefinitionError(f"{at}: compensation.build must be callable")
        if comp.timeout <= timedelta(0):
            raise SagaDefinitionError(f"{at}: compensation timeout must be positive")
        comp.retry.validate(f"{at}.compensation")


def _check_wait(wait: WaitForSignal[Any], at: str) -> None:
    if not isinstance(wait.signal, str) or not _NAME.match(wait.signal):
        raise SagaDefinitionError(f"{at}: signal must match {_NAME.pattern}")
    if not isinstance(wait.timeout, timedelta) or wait.timeout <= timedelta(0):
        raise SagaDefinitionError(f"{at}: timeout must be a positive timedelta")
    model = wait.payload_model
    if model is not None and not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise SagaDefinitionError(f"{at}: payload_model must be a pydantic model")
    if wait.on_signal is not None and not callable(wait.on_signal):
        raise SagaDefinitionError(f"{at}: on_signal must be callable")
    if wait.on_timeout not in ("fail", "continue"):
        raise SagaDefinitionError(f"{at}: on_timeout must be 'fail' or 'continue'")


def _check_timer(timer: Timer[Any], at: str) -> None:
    if (timer.delay is None) == (timer.until is None):
        raise SagaDefinitionError(f"{at}: give exactly one of delay and until")
    if not callable(timer.delay or timer.until):
        raise SagaDefinitionError(f"{at}: delay/until must be callable")


def _check_child(child: ChildSaga[Any], at: str) -> None:
    if not isinstance(child.saga_type, str) or not _NAME.match(child.saga_type):
        raise SagaDefinitionError(f"{at}: saga_type must match {_NAME.pattern}")
    if not callable(child.build):
        raise SagaDefinitionError(f"{at}: build must be callable")
    if child.on_success is not None and not callable(child.on_success):
        raise SagaDefinitionError(f"{at}: on_success must be callable")
    if child.timeout <= timedelta(0):
        raise SagaDefinitionError(f"{at}: timeout must be positive")
    comp = child.compensation
    if comp is not None:
        if not isinstance(comp, ChildCompensation):
            raise SagaDefinitionError(
                f"{at}: compensation must be a ChildCompensation, got {type(comp).__name__}"
            )
        if not isinstance(comp.saga_type, str) or not _NAME.match(comp.saga_type):
            raise SagaDefinitionError(f"{at}.compensation: saga_type must match {_NAME.pattern}")
        if not callable(comp.build):
            raise SagaDefinitionError(f"{at}.compensation: build must be callable")
        if comp.timeout <= timedelta(0):
            raise SagaDefinitionError(f"{at}.compensation: timeout must be positive")


def _check_unit(unit: Unit[Any], at: str) -> None:
    if not _NAME.match(unit.name):
        raise SagaDefinitionError(f"{at}: step name must match {_NAME.pattern}")
    _check_predicate(unit.run_if, at)
    if isinstance(unit, Step):
        _check_step(unit, at)
    elif isinstance(unit, WaitForSignal):
        _check_wait(unit, at)
    elif isinstance(unit, Timer):
        _check_timer(unit, at)
    else:
        _check_child(unit, at)


class SagaDefinition(Generic[D]):
    """Base class of saga definitions; subclasses are validated when they are created.

    Class attributes:
        name: The saga type, unique in a registry (``[a-z][a-z0-9_]*``).
        version: Bumped when the steps change; stored with each instance.
        data_model: The pydantic model of the saga's data.
        steps: The stages, in order: a :class:`Step`, a :class:`Parallel` group of steps, a
            :class:`WaitForSignal`, a :class:`Timer` or a :class:`ChildSaga`.
        search_keys: Fields of the data model operators search sagas by (business keys such
            as ``order_id``); their values at start are stored in an indexed column.
    """

    name: ClassVar[str]
    version: ClassVar[int] = 1
    data_model: ClassVar[type[BaseModel]]
    steps: ClassVar[tuple[Stage[Any], ...]]
    search_keys: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._validate()

    @classmethod
    def _validate(cls) -> None:
        where = cls.__name__
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not _NAME.match(name):
            raise SagaDefinitionError(f"{where}: name must match {_NAME.pattern}, got {name!r}")
        if not isinstance(cls.version, int) or cls.version < 1:
            raise SagaDefinitionError(f"{where}: version must be a positive int")
        model = getattr(cls, "data_model", None)
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise SagaDefinitionError(f"{where}: data_model must be a pydantic BaseModel class")
        keys = cls.search_keys
        if not isinstance(keys, tuple) or not all(k in model.model_fields for k in keys):
            raise SagaDefinitionError(
                f"{where}: search_keys must be a tuple of {model.__name__}'s field names"
            )
        steps = getattr(cls, "steps", None)
        if not isinstance(steps, tuple) or not steps:
            raise SagaDefinitionError(f"{where}: steps must be a non-empty tuple of Step")
        seen: set[str] = set()

        def claim(name: object) -> None:
            if not isinstance(name, str) or not _NAME.match(name):
                raise SagaDefinitionError(f"{where}: step name must match {_NAME.pattern}")
            if name in seen:
                raise SagaDefinitionError(f"{where}: duplicate step name {name!r}")
            seen.add(name)

        for index, stage in enumerate(steps):
            at = f"{where}.steps[{index}]"
            if isinstance(stage, Parallel):
                claim(stage.name)
                _check_predicate(stage.run_if, f"{where}.{stage.name}")
                members = stage.steps
                if not isinstance(members, tuple) or len(members) < 2:
                    raise SagaDefinitionError(
                        f"{where}.{stage.name}: a parallel group needs a tuple of two or more steps"
                    )
                for member in members:
                    if not isinstance(member, Step):
                        raise SagaDefinitionError(
                            f"{where}.{stage.name}: a parallel group holds plain Steps only, "
                            f"got {type(member).__name__}"
                        )
                    claim(member.name)
                    _check_unit(member, f"{where}.{member.name}")
                continue
            if not isinstance(stage, _UNITS):
                raise SagaDefinitionError(
                    f"{at}: must be a Step, Parallel, WaitForSignal, Timer or ChildSaga, "
                    f"got {type(stage).__name__}"
                )
            claim(stage.name)
            _check_unit(stage, f"{where}.{stage.name}")

    @classmethod
    def units(cls) -> tuple[Unit[Any], ...]:
        """Every step, wait, timer and child saga, group members included, in order."""
        found: list[Unit[Any]] = []
        for stage in cls.steps:
            if isinstance(stage, Parallel):
                found.extend(stage.steps)
            else:
                found.append(stage)
        return tuple(found)

    @classmethod
    def command_steps(cls) -> tuple[Step[Any], ...]:
        """The plain steps (group members included): those that send participants commands."""
        return tuple(unit for unit in cls.units() if isinstance(unit, Step))

    @classmethod
    def unit(cls, name: str) -> Unit[Any]:
        """The step, wait, timer or child saga called ``name`` (raises ``KeyError``)."""
        for unit in cls.units():
            if unit.name == name:
                return unit
        raise KeyError(name)

    @classmethod
    def step(cls, name: str) -> Step[Any]:
        """The plain step called ``name``.

        Raises:
            KeyError: No such plain step (a wait, timer or child saga is not one).
        """
        unit = cls.unit(name)
        if not isinstance(unit, Step):
            raise KeyError(name)
        return unit

    @classmethod
    def stage_index(cls, name: str) -> int:
        """The position in :attr:`steps` of the stage holding ``name`` (a unit or a group)."""
        for index, stage in enumerate(cls.steps):
            if stage.name == name:
                return index
            if isinstance(stage, Parallel) and any(m.name == name for m in stage.steps):
                return index
        raise KeyError(name)

    @classmethod
    def step_index(cls, name: str) -> int:
        """The position of stage ``name`` (raises ``KeyError`` if absent); see
        :meth:`stage_index`."""
        return cls.stage_index(name)

    @classmethod
    def services(cls) -> tuple[str, ...]:
        """The participant services the saga talks to, in step order, without repeats."""
        return tuple(dict.fromkeys(step.service for step in cls.command_steps()))

    @classmethod
    def entry_service(cls) -> str:
        """The service admission control counts a new saga against: that of the command its
        first stage sends (a group's first member's), or ``""`` when the first stage sends a
        participant nothing (a timer, a wait, a child saga)."""
        first = cls.steps[0]
        if isinstance(first, Step):
            return first.service
        if isinstance(first, Parallel):
            return first.steps[0].service
        return ""

    @classmethod
    def child_types(cls) -> tuple[str, ...]:
        """The saga types this saga starts (child sagas and their compensations)."""
        found: list[str] = []
        for unit in cls.units():
            if isinstance(unit, ChildSaga):
                found.append(unit.saga_type)
                if unit.compensation is not None:
                    found.append(unit.compensation.saga_type)
        return tuple(dict.fromkeys(found))


class SagaRegistry:
    """The saga definitions a coordinator runs, keyed by (name, version).

    Several versions of one saga type may be registered side by side: a saga always advances
    with the version it started with (``SagaInstance.definition_version``), so a deploy that
    changes the steps never moves an in-flight saga onto other steps. New sagas start with
    the newest registered version of their type, or the one pinned in ``start_versions``.
    Registration is explicit.
    """

    def __init__(
        self,
        definitions: Iterable[type[SagaDefinition[Any]]],
        *,
        start_versions: Mapping[str, int] | None = None,
    ) -> None:
        self._by_key: dict[tuple[str, int], type[SagaDefinition[Any]]] = {}
        for definition in definitions:
            key = (definition.name, definition.version)
            if key in self._by_key:
                raise SagaDefinitionError(
                    f"two definitions are named {definition.name!r} version {definition.version}"
                )
            self._by_key[key] = definition
        self._start: dict[str, type[SagaDefinition[Any]]] = {}
        for (name, _), definition in sorted(self._by_key.items()):
            self._start[name] = definition  # sorted by version: the newest wins
        for name, version in (start_versions or {}).items():
            if (name, version) not in self._by_key:
                raise SagaDefinitionError(
                    f"start version {version} of saga type {name!r} is not registered"
                )
            self._start[name] = self._by_key[(name, version)]
        for definition in self._by_key.values():
            for child in definition.child_types():
                if child not in self._start:
                    raise SagaDefinitionError(
                        f"{definition.name} version {definition.version} starts saga type "
                        f"{child!r}, which is not registered"
                    )

    def get(self, name: str, version: int | None = None) -> type[SagaDefinition[Any]]:
        """The definition ``name`` at ``version``; without a version, the one new sagas start.

        Raises:
            UnknownSagaTypeError: No definition is registered under that name.
            UnknownSagaVersionError: The name is registered, but not that version.
        """
        if version is None:
            try:
                return self._start[name]
            except KeyError:
                raise UnknownSagaTypeError(f"unknown saga type {name!r}") from None
        try:
            return self._by_key[(name, version)]
        except KeyError:
            if name not in self._start:
                raise UnknownSagaTypeError(f"unknown saga type {name!r}") from None
            raise UnknownSagaVersionError(
                f"saga type {name!r} version {version} is not loaded here (loaded: "
                f"{', '.join(str(v) for v in self.versions_of(name))})"
            ) from None

    def pinned(self, start_versions: Mapping[str, int]) -> SagaRegistry:
        """The same definitions, with new sagas of the given types starting on the given
        versions.

        Raises:
            SagaDefinitionError: A pinned version is not registered.
        """
        return SagaRegistry(self, start_versions=start_versions)

    def has(self, name: str, version: int) -> bool:
        """Whether version ``version`` of saga type ``name`` is registered."""
        return (name, version) in self._by_key

    def __contains__(self, name: object) -> bool:
        return name in self._start

    def __iter__(self) -> Iterator[type[SagaDefinition[Any]]]:
        """Every registered definition, every version, by name then version."""
        return iter(definition for _, definition in sorted(self._by_key.items()))

    def names(self) -> tuple[str, ...]:
        """The registered saga types."""
        return tuple(sorted(self._start))

    def keys(self) -> tuple[tuple[str, int], ...]:
        """Every registered ``(name, version)``, sorted."""
        return tuple(sorted(self._by_key))

    def versions_of(self, name: str) -> tuple[int, ...]:
        """The registered versions of saga type ``name``, oldest first."""
        return tuple(v for n, v in sorted(self._by_key) if n == name)

    def start_version(self, name: str) -> int:
        """The version new sagas of type ``name`` start with (raises ``UnknownSagaTypeError``)."""
        return self.get(name).version

    def services(self) -> tuple[str, ...]:
        """Every participant service any registered saga (any version) talks to."""
        return tuple(dict.fromkeys(s for d in self for s in d.services()))
