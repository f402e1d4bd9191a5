"""The saga coordinator, in layers that only point down (checked by import-linter)::

    cli            the ``saga`` command (reads configuration, wires everything)
    app            the composition root of one coordinator process
    api            HTTP API
    ops            operator actions, dead-letter admin, starting sagas
    runtime        reply consumer, batch processor, outbox relay, deadlines, housekeeping
    observability  logs, traces, metrics
    store          PostgreSQL schema, migrations, saga store, outbox rows
    core           definitions and the pure state machine (no I/O imports)

``devstack`` and ``demo`` are dev/test tooling that production code never imports.
"""
