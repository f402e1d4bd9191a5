"""``saga signal <saga id> <name> --data '{...}'``: send a saga a signal.

The signal is checked against the database (the saga must exist) and published to
``saga.signals``; the running coordinators apply it from there, like one a service sends. A
saga that waits for it takes it, an active saga whose wait for it lies ahead keeps it, and
anything else is dead-lettered (``saga dlq list --topic saga.signals.dlq`` shows why).
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer
from aiokafka.errors import KafkaError
from pydantic import ValidationError
from rich.console import Console
from rich.text import Text
from sqlalchemy.exc import SQLAlchemyError

from coordinator.cli.common import database_error_message, fail, first_line, settings_from
from coordinator.cli.options import (
    BootstrapOpt,
    DatabaseOpt,
    JsonOpt,
    SagaIdArg,
    TopicPrefixOpt,
)
from coordinator.config import Settings
from coordinator.core.errors import SagaError
from coordinator.ops.signals import SentSignal, SignalSender
from coordinator.runtime.kafka import create_producer
from coordinator.store.database import create_engine
from coordinator.store.saga_store import SagaStore
from service_sdk.contract import Topics
from service_sdk.producer import ProducerHandle

__all__ = ["signal"]

_SETTLED = ("COMPLETED", "COMPENSATED", "FAILED")


def _payload(data: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint="--data") from exc
    if not isinstance(value, dict):
        raise typer.BadParameter("must be a JSON object", param_hint="--data")
    return value


def _send(
    settings: Settings, saga_id: str, name: str, payload: dict[str, Any], message_id: str | None
) -> SentSignal:
    async def main() -> SentSignal:
        engine = create_engine(settings.database.url, pool_size=1)
        kafka = settings.kafka.model_copy(update={"client_id": "saga-cli"})
        producers = ProducerHandle(lambda: create_producer(kafka), name="saga signal")
        try:
            sender = SignalSender(
                SagaStore(engine),
                producers,
                Topics(settings.kafka.topic_prefix),
                source="saga-cli",
            )
            return await sender.send(saga_id, name, payload, message_id=message_id)
        finally:
            await producers.stop()
            await engine.dispose()

    try:
        return asyncio.run(main())
    except SagaError as exc:
        fail(str(exc))
    except ValidationError as exc:
        fail(f"not a valid signal: {first_line(exc)}")
    except (KafkaError, TimeoutError) as exc:
        fail(f"kafka: {first_line(exc)} ({settings.kafka.bootstrap_servers})")
    except (OSError, SQLAlchemyError) as exc:
        fail(database_error_message(exc))


def signal(
    saga_id: SagaIdArg,
    name: Annotated[
        str, typer.Argument(help="The signal's name (the one the saga waits for, e.g. approval)")
    ],
    data: Annotated[str, typer.Option("--data", help="The signal's payload: a JSON object")] = "{}",
    signal_id: Annotated[
        str | None,
        typer.Option(
            "--id", help="The signal's id; sending the same id again is applied once [default: new]"
        ),
    ] = None,
    as_json: JsonOpt = False,
    bootstrap_servers: BootstrapOpt = None,
    database_url: DatabaseOpt = None,
    topic_prefix: TopicPrefixOpt = None,
) -> None:
    """Send a saga a signal (published to saga.signals; the coordinators apply it)."""
    payload = _payload(data)
    settings = settings_from(
        bootstrap_servers=bootstrap_servers, database_url=database_url, topic_prefix=topic_prefix
    )
    sent = _send(settings, saga_id, name, payload, signal_id)
    if as_json:
        typer.echo(json.dumps(sent.as_dict(), indent=2))
        return
    console = Console(highlight=False)
    console.print(
        f"signal {sent.signal_id} ({sent.name}) sent to {sent.topic} for saga {sent.saga_id}"
    )
    if sent.saga_status.value in _SETTLED:
        console.print(
            Text(
                f"the saga is {sent.saga_status.value}: the signal will be dead-lettered "
                "(saga_terminal)",
                style="yellow",
            )
        )
