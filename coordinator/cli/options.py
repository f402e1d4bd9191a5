"""The option types the ``saga`` subcommands share, defined once."""

from __future__ import annotations

from typing import Annotated

import typer

from coordinator.observability.logs import LogFormat

__all__ = [
    "ActorOpt",
    "BootstrapOpt",
    "DatabaseOpt",
    "DryRunOpt",
    "JsonOpt",
    "LogFormatOpt",
    "MetricsPortOpt",
    "SagaIdArg",
    "TopicPrefixOpt",
    "VerboseOpt",
]

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
TopicPrefixOpt = Annotated[
    str | None,
    typer.Option(
        "--topic-prefix", help="Topic prefix the coordinators use [env SAGA_KAFKA__TOPIC_PREFIX]"
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
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Log at DEBUG level")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout")]
SagaIdArg = Annotated[str, typer.Argument(help="The saga id", show_default=False)]
ActorOpt = Annotated[
    str | None,
    typer.Option("--actor", help="Who acts (recorded in the history) [default: $USER]"),
]
DryRunOpt = Annotated[
    bool,
    typer.Option("--dry-run", help="Show the commands the action would send; change nothing"),
]
