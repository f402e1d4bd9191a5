"""Loads the saga definitions the CLI runs from configuration (``SAGA_REGISTRY``)."""

from __future__ import annotations

import importlib

from coordinator.core.definition import SagaRegistry

__all__ = ["load_registry"]


def load_registry(spec: str) -> SagaRegistry:
    """The :class:`SagaRegistry` named by ``spec``, ``"package.module:attribute"``.

    The attribute is a registry or a callable without arguments that returns one (e.g.
    ``saga_defs:default_registry``).

    Raises:
        ValueError: ``spec`` is malformed, cannot be imported, or names something else.
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"saga registry {spec!r} is not of the form 'package.module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"saga registry {spec!r}: cannot import {module_name!r}: {exc}") from exc
    try:
        target = getattr(module, attribute)
    except AttributeError:
        raise ValueError(f"saga registry {spec!r}: {module_name} has no {attribute!r}") from None
    # A factory is a function; a class (say, a data model) is named by mistake, not called.
    is_factory = callable(target) and not isinstance(target, (SagaRegistry, type))
    registry = target() if is_factory else target
    if not isinstance(registry, SagaRegistry):
        raise ValueError(
            f"saga registry {spec!r} is a {type(registry).__name__}, not a SagaRegistry"
        )
    return registry
