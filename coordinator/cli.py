"""The ``saga`` command line: the composition root (the only place that reads the environment)."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from typing import Annotated, Any

import typer

from coordinator.config import Settings

__all__ = ["app", "main"]

app = typer.Typer(
    name="saga",
    help="Saga coordinator over Kafka: run it, run the demo, inspect sagas.",
    no_args_is_help=True,
    add_completion=False,
)
db_app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)
app.add_typer(db_app, name="db")

BootstrapOpt = Annotated[
    str | None,
    typer.Option(
        "--bootstrap-servers", help="Kafka bootstrap servers [env SAGA_KAFKA__BOOTSTRAP_SERVERS]"
    ),
]
DatabaseOpt = Annotated[
    str | None,
    typer.Option(
        "--database-url", help="PostgreSQL URL, postgresql+asyncpg://... [env SAGA_DATABASE__URL]"
    ),
]


def _settings(bootstrap_servers: str | None = None, database_url: str | None = None) -> Settings:
    settings = Settings()
    if bootstrap_servers:
        settings.kafka.bootstrap_servers = bootstrap_servers
    if database_url:
        settings.database.url = database_url
    return settings


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("aiokafka").setLevel(logging.WARNING)


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


@app.command()
def run(
    bootstrap_servers: BootstrapOpt = None,
    database_url: DatabaseOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run a coordinator instance until SIGTERM/SIGINT, then drain and exit."""
    from coordinator.app import Coordinator
    from saga_defs import default_registry

    _logging(verbose)
    settings = _settings(bootstrap_servers, database_url)

    async def serve() -> None:
        stop = asyncio.Event()
        _stop_on_signals(stop)
        async with Coordinator(settings, default_registry()) as coordinator:
            await coordinator.serve(stop)

    asyncio.run(serve())


@app.command()
def participant(
    name: Annotated[str, typer.Argument(help="inventory, payment or shipping")],
    bootstrap_servers: BootstrapOpt = None,
    database_url: DatabaseOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run one of the demo's example participant services until SIGTERM/SIGINT."""
    from coordinator.demo.processes import run_participant

    _logging(verbose)
    settings = _settings(bootstrap_servers, database_url)
    asyncio.run(run_participant(name, settings, _stop_on_signals))


@db_app.command("upgrade")
def db_upgrade(
    database_url: DatabaseOpt = None,
    revision: Annotated[str, typer.Option(help="Target revision")] = "head",
) -> None:
    """Migrate the coordinator's schema to the latest (or given) revision."""
    from coordinator.migrate import upgrade_database

    settings = _settings(database_url=database_url)
    asyncio.run(upgrade_database(settings.database.url, revision))
    typer.echo(f"database at {revision}")


@app.command()
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
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the order saga end to end: broker, database, coordinator and three services.

    Without --bootstrap-servers / --database-url (or SAGA_KAFKA__BOOTSTRAP_SERVERS /
    SAGA_DATABASE__URL) it starts the embedded broker and an embedded PostgreSQL.
    """
    from coordinator.demo.runner import DemoOptions, run_demo

    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, stream=sys.stderr)
    settings = Settings()
    env_bootstrap = bootstrap_servers or (
        settings.kafka.bootstrap_servers if "SAGA_KAFKA__BOOTSTRAP_SERVERS" in _env() else None
    )
    env_database = database_url or (
        settings.database.url if "SAGA_DATABASE__URL" in _env() else None
    )
    options = DemoOptions(
        orders=orders,
        fail_rate=fail_rate,
        bootstrap_servers=env_bootstrap,
        database_url=env_database,
        idempotent=settings.kafka.idempotent if env_bootstrap else None,
        timeout_s=timeout,
        seed=seed,
        quiet=as_json,
    )
    summary = asyncio.run(run_demo(options))
    if as_json:
        typer.echo(json.dumps(summary.as_dict()))
    if not summary.ok:
        raise typer.Exit(code=1)


def _env() -> dict[str, Any]:
    import os

    return dict(os.environ)


def main() -> None:
    """Entry point of the ``saga`` console script."""
    app()
