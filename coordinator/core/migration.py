"""Moving a saga onto another version of its definition: an operator's explicit choice.

Sagas are never migrated implicitly (a saga advances with the version it started with). An
operator may move one forward (``saga migrate <id> --to-version N``) when the target version
can carry on from where the saga stands: it is QUEUED (nothing done yet), or RUNNING with its
completed steps and awaited step at the same positions in the target version. Its data is
moved forward by the target definitions' upcasters, classmethods named ``upcast_v1_to_v2``
(``eventsourcing``'s convention), applied in turn; without one, the data must already fit the
target's data model. Pure, like the engine: the caller persists the returned transition.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from coordinator.core.definition import Parallel, SagaDefinition, SagaRegistry
from coordinator.core.draft import describe
from coordinator.core.errors import InvalidOperatorActionError
from coordinator.core.state import HistoryEntry, HistoryKind, SagaInstance, SagaStatus, Transition

__all__ = ["Upcaster", "migrate_saga", "upcasters"]

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


def upcasters(registry: SagaRegistry, name: str, start: int, target: int) -> list[Upcaster]:
    """The upcasters from version ``start`` to ``target`` of saga type ``name``, in order; a
    step without one (the data is unchanged) is left out.

    Raises:
        UnknownSagaVersionError: A version on the way is not registered.
    """
    found: list[Upcaster] = []
    for version in range(start, target):
        definition = registry.get(name, version + 1)
        upcast = getattr(definition, f"upcast_v{version}_to_v{version + 1}", None)
        if upcast is not None:
            found.append(upcast)
    return found


def _stage_names(stage: Any) -> set[str]:
    if isinstance(stage, Parallel):
        return {stage.name, *(member.name for member in stage.steps)}
    return {stage.name}


def _check_position(instance: SagaInstance, target: type[SagaDefinition[Any]]) -> None:
    where = {"saga_id": instance.saga_id, "step": instance.current_step}
    if instance.status is SagaStatus.QUEUED:
        return
    if instance.status is not SagaStatus.RUNNING:
        raise InvalidOperatorActionError(
            f"cannot migrate a {instance.status.value} saga: only QUEUED or RUNNING sagas move "
            "to another version",
            **where,
        )
    stages = target.steps
    done = set(instance.completed_steps) | set(instance.skipped_steps)
    awaited = {entry.step for entry in instance.awaiting}
    position = instance.stage
    fits = 0 <= position < len(stages) and awaited <= _stage_names(stages[position])
    for stage in stages[:position] if fits else ():
        # Done: the stage itself completed or was skipped, or each member of a group did.
        members = _stage_names(stage) - {stage.name}
        fits = fits and (stage.name in done or (bool(members) and members <= done))
    ahead = set().union(*(_stage_names(s) for s in stages[position + 1 :])) if fits else set()
    if not fits or done & ahead:
        listed = [stage.name for stage in stages]
        raise InvalidOperatorActionError(
            f"version {target.version} cannot carry on from here: the saga completed "
            f"{list(instance.completed_steps)} and awaits {sorted(awaited)}, version "
            f"{target.version}'s steps are {listed}",
            **where,
        )


def migrate_saga(
    registry: SagaRegistry,
    instance: SagaInstance,
    to_version: int,
    *,
    actor: str,
    reason: str,
    now: datetime,
) -> Transition:
    """The saga moved onto ``to_version`` with its data upcast, and a history entry saying so.

    Raises:
        InvalidOperatorActionError: Not a forward move, or the target cannot carry on from
            where the saga stands, or the upcast data does not fit the target's data model.
        UnknownSagaVersionError: A version on the way is not registered.
    """
    start = instance.definition_version
    where = {"saga_id": instance.saga_id, "step": instance.current_step}
    if to_version <= start:
        raise InvalidOperatorActionError(
            f"saga {instance.saga_id!r} runs on version {start}; migrations go forward only",
            **where,
        )
    target = registry.get(instance.saga_type, to_version)
    _check_position(instance, target)
    chain = upcasters(registry, instance.saga_type, start, to_version)
    data = dict(instance.data)
    for upcast in chain:
        data = upcast(data)
    try:
        fitted = target.data_model.model_validate(data).model_dump(mode="json")
    except ValidationError as exc:
        raise InvalidOperatorActionError(
            f"the saga's data does not fit version {to_version}'s data model"
            f"{' after upcasting' if chain else ' (no upcaster on the way)'}: {describe(exc)}",
            **where,
        ) from exc
    entry = HistoryEntry(
        HistoryKind.OPERATOR_ACTION,
        instance.current_step,
        None,
        {
            "actor": actor,
            "action": "migrate",
            "reason": reason,
            "from_version": start,
            "to_version": to_version,
            "upcasters": [getattr(u, "__qualname__", repr(u)) for u in chain],
            "data_before": dict(instance.data),
        },
    )
    after = replace(instance, definition_version=to_version, data=fitted, updated_at=now)
    return Transition(after, history=(entry,))
