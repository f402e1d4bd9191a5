"""``saga demo``: the order saga end to end on an embedded (or given) broker and database."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import os
import secrets
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated

import typer
from aiokafka.errors import KafkaError

from coordinator.cli.common import fail, first_line, run_until_terminated
from coordinator.cli.options import BootstrapOpt, DatabaseOpt, VerboseOpt
from coordinator.config import Settings

if TYPE_CHECKING:
    from coordinator.demo.runner import DemoSummary

__all__ = ["demo", "stop_on_signals"]


def stop_on_signals(stop: asyncio.Event) -> None:
    """Set ``stop`` on SIGINT (Ctrl-C) or SIGTERM."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


def demo(
    saga: Annotated[
        str,
        typer.Option(
            help="order: the order saga; trip: the trip saga (every saga shape, two "
            "coordinators, approvals sent as signals, a schedule every five seconds)"
        ),
    ] = "order",
    orders: Annotated[int, typer.Option(min=1, help="How many orders (or trips) to submit")] = 100,
    fail_rate: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Fraction of orders whose payment is declined")
    ] = 0.1,
    as_json: Annotated[bool, typer.Option("--json", help="End with one JSON summary line")] = False,
    bootstrap_servers: BootstrapOpt = None,
    database_url: DatabaseOpt = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for every saga to end")] = 300.0,
    seed: Annotated[int, typer.Option(help="Random seed of the generated orders")] = 7,
    rate: Annotated[
        float, typer.Option(min=0.0, help="Orders per second; 0 submits all at once")
    ] = 0.0,
    handler_delay_ms: Annotated[
        float,
        typer.Option(min=0.0, help="Make every participant command take this much longer"),
    ] = 0.0,
    keep: Annotated[
        bool,
        typer.Option(
            "--keep",
            help="Keep everything running after the summary, with the console on --port "
            "(as saga dev), until Ctrl-C",
        ),
    ] = False,
    port: Annotated[
        int, typer.Option(min=1, max=65_535, help="With --keep: the API and console port")
    ] = 8080,
    verbose: VerboseOpt = False,
) -> None:
    """Run the order saga (or, with --saga trip, the trip saga) end to end: broker,
    database, coordinator(s) and the example services.

    Without --bootstrap-servers / --database-url (or SAGA_KAFKA__BOOTSTRAP_SERVERS /
    SAGA_DATABASE__URL) it starts the embedded broker and an embedded PostgreSQL.
    """
    from coordinator.demo.dev_server import http_environment
    from coordinator.demo.runner import DemoOptions, run_demo

    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, stream=sys.stderr)
    settings = Settings()
    env_bootstrap = bootstrap_servers or (
        settings.kafka.bootstrap_servers if "SAGA_KAFKA__BOOTSTRAP_SERVERS" in os.environ else None
    )
    env_database = database_url or (
        settings.database.url if "SAGA_DATABASE__URL" in os.environ else None
    )
    options = DemoOptions(
        orders=orders,
        fail_rate=fail_rate,
        bootstrap_servers=env_bootstrap,
        database_url=env_database,
        idempotent=settings.kafka.idempotent if env_bootstrap else None,
        timeout_s=timeout,
        seed=seed,
        rate=rate,
        handler_delay_ms=handler_delay_ms,
        quiet=as_json,
    )
    if saga not in ("order", "trip"):
        fail(f"--saga must be order or trip, not {saga!r}")
    token = secrets.token_urlsafe(18)
    if keep:
        options = dataclasses.replace(options, environment=http_environment(port, token))
    run: Callable[..., Awaitable[DemoSummary]] = functools.partial(run_demo, options)
    if saga == "trip":
        from coordinator.demo.trip import run_trip_demo

        # Two coordinators: the schedule's ticks and the sagas are shared between them.
        run = functools.partial(run_trip_demo, dataclasses.replace(options, coordinators=2))

    async def work() -> DemoSummary:
        if not keep:
            return await run()
        stop = asyncio.Event()
        stop_on_signals(stop)
        return await run(keep=(port, token, stop))

    try:
        summary = run_until_terminated(work())
    except KafkaError as exc:
        fail(f"kafka: {first_line(exc)}")
    if as_json:
        typer.echo(json.dumps(summary.as_dict()))
    if not summary.ok:
        raise typer.Exit(code=1)
