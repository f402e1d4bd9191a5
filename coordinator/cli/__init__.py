"""The ``saga`` command line: the composition root that reads settings and wires components."""

from coordinator.cli.main import main

__all__ = ["main"]
