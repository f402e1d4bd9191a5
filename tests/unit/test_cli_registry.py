"""The CLI runs the saga definitions its configuration names (SAGA_REGISTRY)."""

from __future__ import annotations

import pytest

from coordinator.cli.registry import load_registry
from coordinator.config import Settings
from coordinator.core.definition import SagaRegistry
from saga_defs import default_registry


def test_the_default_names_the_order_saga() -> None:
    registry = load_registry(Settings().registry)
    assert "order" in registry


def test_a_registry_instance_or_a_factory_is_accepted() -> None:
    assert "order" in load_registry("saga_defs:default_registry")
    module = type(__import__("sys"))("registry_probe")
    module.REGISTRY = default_registry()  # type: ignore[attr-defined]
    import sys

    sys.modules["registry_probe"] = module
    try:
        assert isinstance(load_registry("registry_probe:REGISTRY"), SagaRegistry)
    finally:
        del sys.modules["registry_probe"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("saga_defs", "not of the form"),
        ("no_such_module:x", "cannot import"),
        ("saga_defs:no_such_name", "has no 'no_such_name'"),
        ("saga_defs.order:OrderData", "not a SagaRegistry"),
    ],
)
def test_a_bad_name_is_a_clear_error(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_registry(spec)


def test_the_environment_chooses_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGA_REGISTRY", "somewhere.else:registry")
    assert Settings().registry == "somewhere.else:registry"
