"""The ``saga`` command line: the composition root (the only place that reads the environment)."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Annotated

import typer

from coordinator.cli.common import (
    fail,
    freeze_startup_heap,
    registry_from,
    run_service,
    settings_from,
)
from coordinator.cli.options import (
    BootstrapOpt,
    DatabaseOpt,
    LogFormatOpt,
    MetricsPortOpt,
    VerboseOpt,
)
from coordinator.observability.logs import LogFormat, configure_logging
from service_sdk.kafka_logs import throttle_kafka_logs

__all__ = ["app", "main"]

app = typer.Typer(
    name="saga",
    help="Saga coordinator over Kafka: run it, run the demo, inspect sagas.",
    no_args_is_help=True,
    add_completion=False,
)


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
    verbose: VerboseOpt = False,
    log_format: LogFormatOpt = LogFormat.TEXT,
) -> None:
    """Run a coordinator instance until SIGTERM/SIGINT, then drain and exit.

    Its HTTP API listens on SAGA_HTTP__HOST:SAGA_HTTP__PORT (127.0.0.1:8080; port "off"
    disables it); mutating endpoints need SAGA_HTTP__TOKEN as a bearer token.
    """
    from prometheus_client import CollectorRegistry

    from coordinator.app import Coordinator
    from coordinator.core.schedule import ScheduleError
    from coordinator.observability.metrics import CoordinatorMetrics, serve_metrics

    _logging(verbose, log_format)
    settings = settings_from(bootstrap_servers=bootstrap_servers, database_url=database_url)
    if metrics_port is not None:
        settings.metrics.port = metrics_port
    sagas = registry_from(settings)
    # During a Kafka outage aiokafka logs every reconnect attempt: one line per interval.
    throttle_kafka_logs()

    async def serve() -> None:
        stop = asyncio.Event()
        _stop_on_signals(stop)
        collectors = CollectorRegistry()
        metrics = CoordinatorMetrics(collectors)
        async with serve_metrics(collectors, settings.metrics):
            coordinator = Coordinator(settings, sagas, metrics=metrics)
            try:
                coordinator.scheduled()
            except ScheduleError as exc:
                fail(f"{exc} [env SAGA_SCHEDULES__DECLARED]")
            try:
                # Not `async with`: a start still waiting for Kafka must end on SIGTERM too.
                await coordinator.serve(stop)
            finally:
                await coordinator.stop()

    freeze_startup_heap()
    run_service(serve())


@app.command()
def participant(
    name: Annotated[
        str,
        typer.Argument(
            help="inventory, payment or shipping; flights, hotels, cars, fraud, tickets, loyalty or notifications; or trip (all seven)"
        ),
    ],
    bootstrap_servers: BootstrapOpt = None,
    database_url: DatabaseOpt = None,
    metrics_port: MetricsPortOpt = None,
    verbose: VerboseOpt = False,
    log_format: LogFormatOpt = LogFormat.TEXT,
    handler_delay_ms: Annotated[
        float,
        typer.Option(min=0.0, help="Make every command take this much longer (a slow service)"),
    ] = 0.0,
) -> None:
    """Run one of the demo's example participant services until SIGTERM/SIGINT."""
    from coordinator.demo.processes import run_participant

    _logging(verbose, log_format)
    settings = settings_from(bootstrap_servers=bootstrap_servers, database_url=database_url)
    if metrics_port is not None:
        settings.metrics.port = metrics_port
    freeze_startup_heap()
    run_service(
        run_participant(name, settings, _stop_on_signals, handler_delay_s=handler_delay_ms / 1000)
    )


def main() -> None:
    """Entry point of the ``saga`` console script."""
    app()


# saga demo
from coordinator.cli.demo import demo as _demo  # noqa: E402

app.command("demo")(_demo)

# saga dev
from coordinator.cli.dev import dev as _dev  # noqa: E402

app.command("dev")(_dev)

# saga bench
from coordinator.cli.bench import bench as _bench  # noqa: E402

app.command("bench")(_bench)

# saga contract --asyncapi
from coordinator.cli.contract import contract as _contract  # noqa: E402

app.command("contract")(_contract)

# Last, so the operators' commands (show, list, retry, abort) follow the ones above in --help.
from coordinator.cli.sagas import register as _register_sagas  # noqa: E402

_register_sagas(app)

# saga signal <saga id> <name> --data '{...}'
from coordinator.cli.signals import signal as _signal  # noqa: E402

app.command("signal")(_signal)

# saga db upgrade
from coordinator.cli.db import db_app as _db_app  # noqa: E402

app.add_typer(_db_app, name="db")

# The dead-letter commands: saga dlq list | show | replay.
from coordinator.cli.dlq import dlq_app as _dlq_app  # noqa: E402

app.add_typer(_dlq_app, name="dlq")

# Scheduled sagas: saga schedules list | pause | resume.
from coordinator.cli.schedules import schedules_app as _schedules_app  # noqa: E402

app.add_typer(_schedules_app, name="schedules")
