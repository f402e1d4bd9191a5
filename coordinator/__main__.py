"""``python -m coordinator`` runs the ``saga`` CLI."""

from coordinator.cli import main

main()
