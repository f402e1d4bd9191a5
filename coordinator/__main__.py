"""``python -m coordinator`` runs the ``saga`` CLI."""

from coordinator.cli.main import main

main()
