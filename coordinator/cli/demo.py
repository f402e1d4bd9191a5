"""``saga demo``: the order saga end to end on an embedded (or given) broker and database."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from typing import Annotated

import typer
from aiokafka.errors import KafkaError

from coordinator.cli.common import fail, first_line
from coordinator.cli.options import BootstrapOpt, DatabaseOpt, VerboseOpt
from coordinator.config import Settings

__all__ = ["demo"]


def demo(
    orders: Annotated[int, typer.Option(min=1, help="How many orders to submit")] = 100,
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
    verbose: VerboseOpt = False,
) -> None:
    """Run the order saga end to end: broker, database, coordinator and three services.

    Without --bootstrap-servers / --database-url (or SAGA_KAFKA__BOOTSTRAP_SERVERS /
    SAGA_DATABASE__URL) it starts the embedded broker and an embedded PostgreSQL.
    """
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
    try:
        summary = asyncio.run(run_demo(options))
    except KafkaError as exc:
        fail(f"kafka: {first_line(exc)}")
    if as_json:
        typer.echo(json.dumps(summary.as_dict()))
    if not summary.ok:
        raise typer.Exit(code=1)
