"""The ``saga`` command line: the composition root (the only place that reads the environment)."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from typing import Annotated, Any

import typer
from aiokafka.errors import KafkaError

from coordinator.cli.common import fail, first_line, settings_from
from coordinator.config import Settings
from coordinator.observability.logs import LogFormat, configure_logging

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
MetricsPortOpt = Annotated[
    int | None,
    typer.Option(
        "--metrics-port", min=0, max=65_535, help="Port of /metrics [env SAGA_METRICS__PORT]"
    ),
]

LogFormatOpt = Annotated[
    LogFormat,
    typer.Option(
        "--log-format",
        envvar="SAGA_LOG_FORMAT",
        case_sensitive=False,
        help="json: one JSON object per line, with saga_id/step/message_id/command_id; "
        "text: for a terminal",
    ),
]


def _logging(verbose: bool, log_format: LogFormat = LogFormat.TEXT) -> None:
    configure_logging(log_format, level=logging.DEBUG if verbose else logging.INFO)


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


@app.command()
def run(
    bootstrap_servers: BootstrapOpt = None,
    database_url: DatabaseOpt = None,
    metrics_port: MetricsPortOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    log_format: LogFormatOpt = LogFormat.TEXT,
) -> None:
    """Run a coordinator instance until SIGTERM/SIGINT, then drain and exit.

    Its HTTP API listens on SAGA_HTTP__HOST:SAGA_HTTP__PORT (0.0.0.0:8080; port "off"
    disables it); mutating endpoints need SAGA_HTTP__TOKEN as a bearer token.
    """
    from prometheus_client import CollectorRegistry

    from coordinator.app import Coordinator
    from coordinator.observability.metrics import CoordinatorMetrics, serve_metrics
    from saga_defs import default_registry

    _logging(verbose, log_format)
    settings = settings_from(bootstrap_servers=bootstrap_servers, database_url=database_url)
    if metrics_port is not None:
        settings.metrics.port = metrics_port

    async def serve() -> None:
        stop = asyncio.Event()
        _stop_on_signals(stop)
        registry = CollectorRegistry()
        metrics = CoordinatorMetrics(registry)
        async with (
            serve_metrics(registry, settings.metrics),
            Coordinator(settings, default_registry(), metrics=metrics) as coordinator,
        ):
            await coordinator.serve(stop)

    asyncio.run(serve())


@app.command()
def participant(
    name: Annotated[str, typer.Argument(help="inventory, payment or shipping")],
    bootstrap_servers: BootstrapOpt = None,
    database_url: DatabaseOpt = None,
    metrics_port: MetricsPortOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    log_format: LogFormatOpt = LogFormat.TEXT,
) -> None:
    """Run one of the demo's example participant services until SIGTERM/SIGINT."""
    from coordinator.demo.processes import run_participant

    _logging(verbose, log_format)
    settings = settings_from(bootstrap_servers=bootstrap_servers, database_url=database_url)
    if metrics_port is not None:
        settings.metrics.port = metrics_port
    asyncio.run(run_participant(name, settings, _stop_on_signals))


@db_app.command("upgrade")
def db_upgrade(
    database_url: DatabaseOpt = None,
    revision: Annotated[str, typer.Option(help="Target revision")] = "head",
) -> None:
    """Migrate the coordinator's schema to the latest (or given) revision."""
    from coordinator.store.migrate import upgrade_database

    settings = settings_from(database_url=database_url)
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
    rate: Annotated[
        float, typer.Option(min=0.0, help="Orders per second; 0 submits all at once")
    ] = 0.0,
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
        rate=rate,
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


def _env() -> dict[str, Any]:
    import os

    return dict(os.environ)


def main() -> None:
    """Entry point of the ``saga`` console script."""
    app()


# Last, so the operators' commands (show, list, retry, abort) follow the ones above in --help.
from coordinator.cli.sagas import register as _register_sagas  # noqa: E402

_register_sagas(app)

# The dead-letter commands: saga dlq list | show | replay.
from coordinator.cli.dlq import dlq_app as _dlq_app  # noqa: E402

app.add_typer(_dlq_app, name="dlq")
