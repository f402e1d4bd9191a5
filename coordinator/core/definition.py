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
from datetime import timedelta
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel

from coordinator.core.errors import (
    SagaDefinitionError,
    UnknownSagaTypeError,
    UnknownSagaVersionError,
)
from service_sdk.contract import Command

__all__ = [
    "Compensation",
    "RetryPolicy",
    "SagaDefinition",
    "SagaRegistry",
    "Step",
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


class SagaDefinition(Generic[D]):
    """Base class of saga definitions; subclasses are validated when they are created.

    Class attributes:
        name: The saga type, unique in a registry (``[a-z][a-z0-9_]*``).
        version: Bumped when the steps change; stored with each instance.
        data_model: The pydantic model of the saga's data.
        steps: The steps, in order.
        search_keys: Fields of the data model operators search sagas by (business keys such
            as ``order_id``); their values at start are stored in an indexed column.
    """

    name: ClassVar[str]
    version: ClassVar[int] = 1
    data_model: ClassVar[type[BaseModel]]
    steps: ClassVar[tuple[Step[Any], ...]]
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
        for index, step in enumerate(steps):
            at = f"{where}.steps[{index}]"
            if not isinstance(step, Step):
                raise SagaDefinitionError(f"{at}: must be a Step, got {type(step).__name__}")
            at = f"{where}.{step.name}"
            if not _NAME.match(step.name):
                raise SagaDefinitionError(f"{at}: step name must match {_NAME.pattern}")
            if step.name in seen:
                raise SagaDefinitionError(f"{where}: duplicate step name {step.name!r}")
            seen.add(step.name)
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

    @classmethod
    def step(cls, name: str) -> Step[Any]:
        """The step called ``name``.

        Raises:
            KeyError: No such step.
        """
        for step in cls.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    @classmethod
    def step_index(cls, name: str) -> int:
        """The position of step ``name`` (raises ``KeyError`` if absent)."""
        for index, step in enumerate(cls.steps):
            if step.name == name:
                return index
        raise KeyError(name)

    @classmethod
    def services(cls) -> tuple[str, ...]:
        """The participant services the saga talks to, in step order, without repeats."""
        return tuple(dict.fromkeys(step.service for step in cls.steps))


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
