"""The demo: example participant services, the ledger check and the demo runner."""
