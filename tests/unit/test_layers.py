"""The layer rules of DESIGN.md hold: checked by import-linter and in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IO_LIBRARIES = ("aiokafka", "sqlalchemy", "asyncpg", "prometheus_client", "fastapi")


def test_import_linter_contracts_are_kept() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout


@pytest.mark.parametrize(
    "module", ["coordinator.core", "service_sdk.contract", "service_sdk", "saga_defs"]
)
def test_the_pure_modules_load_no_io_library(module: str) -> None:
    probe = (
        f"import sys, {module}\n"
        f"loaded = [m for m in {IO_LIBRARIES!r} if m in sys.modules]\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "", f"importing {module} loaded {result.stdout.strip()}"
