"""The ``saga dlq list | show | replay`` commands: operators browse and replay dead letters.

Registered on the ``saga`` app by :mod:`coordinator.cli.main`. ``list`` and ``show`` read Kafka
only; ``replay`` also records every replayed dead letter in PostgreSQL
(``saga.dead_letter_replay``), so replaying the same dead letters again sends nothing. Errors
print one line to stderr and exit 1; usage errors exit 2.

Examples::

    saga dlq list --reason handler_error --since 2025-06-01T00:00:00+00:00
    saga dlq show saga.replies.dlq 0 42
    saga dlq replay --topic payment.commands --reason handler_error --dry-run
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, TypeVar

import typer
from aiokafka.errors import KafkaError
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy.exc import SQLAlchemyError

from coordinator.cli.common import database_error_message, fail, first_line, settings_from
from coordinator.cli.options import BootstrapOpt, DatabaseOpt, JsonOpt, TopicPrefixOpt
from coordinator.config import Settings
from coordinator.core.errors import SagaError
from coordinator.ops.dead_letter_admin import (
    DeadLetterAdmin,
    DeadLetterFilter,
    ReplayReport,
    StoredDeadLetter,
)
from coordinator.runtime.kafka import producer_kwargs
from coordinator.store.database import create_engine
from service_sdk.contract import Topics

__all__ = ["dlq_app"]

T = TypeVar("T")

dlq_app = typer.Typer(
    help="Dead letters: list, inspect and replay them (every <topic>.dlq under the prefix).",
    no_args_is_help=True,
)

TopicOpt = Annotated[
    str | None,
    typer.Option("--topic", help="Original or dead-letter topic (the prefix is added)"),
]
ReasonOpt = Annotated[
    str | None, typer.Option("--reason", help="Reason code, e.g. malformed, handler_error")
]
SagaIdOpt = Annotated[str | None, typer.Option("--saga-id", help="The ce_sagaid header")]
SinceOpt = Annotated[
    str | None,
    typer.Option("--since", help="Dead-lettered at or after (ISO 8601 with offset)"),
]
UntilOpt = Annotated[
    str | None, typer.Option("--until", help="Dead-lettered before (ISO 8601 with offset)")
]

_MESSAGE_WIDTH = 60
_REASON_WIDTH = len("unknown_saga_type")


# --- wiring ----------------------------------------------------------------------------------


def _run(settings: Settings, work: Callable[[DeadLetterAdmin], Awaitable[T]]) -> T:
    """Run ``work`` with an admin; errors become one line on stderr and exit 1."""

    async def main() -> T:
        # The pool connects on first use: listing never touches the database.
        engine = create_engine(settings.database.url, pool_size=1)
        try:
            async with DeadLetterAdmin(
                settings.kafka.bootstrap_servers,
                engine,
                Topics(settings.kafka.topic_prefix),
                producer_kwargs={**producer_kwargs(settings.kafka), "client_id": "saga-dlq"},
            ) as admin:
                return await work(admin)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(main())
    except SagaError as exc:
        fail(str(exc))
    except (KafkaError, TimeoutError) as exc:
        fail(f"kafka: {first_line(exc)} ({settings.kafka.bootstrap_servers})")
    except (OSError, SQLAlchemyError) as exc:
        fail(database_error_message(exc))


def _time(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"not an ISO 8601 time: {value!r}", param_hint=option) from None
    if parsed.utcoffset() is None:
        raise typer.BadParameter(
            f"{value!r} has no UTC offset; add one, e.g. {value}+00:00", param_hint=option
        )
    return parsed


def _filters(
    topic: str | None, reason: str | None, saga_id: str | None, since: str | None, until: str | None
) -> DeadLetterFilter:
    return DeadLetterFilter(
        topic=topic,
        reason=reason,
        saga_id=saga_id,
        since=_time(since, "--since"),
        until=_time(until, "--until"),
    )


def _actor(actor: str | None) -> str:
    return (actor or os.environ.get("USER") or "operator").strip() or "operator"


def _print_json(document: Any) -> None:
    typer.echo(json.dumps(document, indent=2, ensure_ascii=False))


def _short(text: str | None, width: int = _MESSAGE_WIDTH) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _body(letter: StoredDeadLetter) -> dict[str, Any]:
    """The body for ``show --json``: parsed JSON when it is JSON, else the bytes' repr."""
    if letter.value is None:
        return {"body": None}
    try:
        return {"body": json.loads(letter.value)}
    except ValueError:
        return {"body_repr": repr(letter.value)}


# --- rendering -------------------------------------------------------------------------------


def _local(topic: str | None, prefix: str) -> str:
    if not topic:
        return "-"
    return topic[len(prefix) :] if prefix and topic.startswith(prefix) else topic


def render_letters(
    console: Console, letters: list[StoredDeadLetter], *, title: str, prefix: str = ""
) -> None:
    """A table of dead letters, one row each (topic names without the prefix)."""
    if prefix:
        title = f"{title} (topic prefix {prefix})"
    table = Table(
        title=title, header_style="bold", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False
    )
    table.add_column("dead letter", no_wrap=True, min_width=24)
    table.add_column("time (UTC)", no_wrap=True, min_width=14)
    table.add_column("reason", no_wrap=True, style="bold yellow", min_width=_REASON_WIDTH)
    table.add_column("original", no_wrap=True, overflow="ellipsis")
    table.add_column("saga id", no_wrap=True, overflow="ellipsis")
    table.add_column("replays", justify="right")
    table.add_column("exception", no_wrap=True, overflow="ellipsis", ratio=1, min_width=10)
    for letter in letters:
        origin = "-"
        if letter.original_topic:
            origin = (
                f"{_local(letter.original_topic, prefix)}"
                f"[{letter.original_partition}]@{letter.original_offset}"
            )
        table.add_row(
            f"{_local(letter.dlq_topic, prefix)}[{letter.partition}]@{letter.offset}",
            letter.timestamp.strftime("%m-%d %H:%M:%S") if letter.timestamp else "-",
            letter.reason or "-",
            origin,
            letter.saga_id or "-",
            str(letter.replay_count),
            _short(letter.exception_message),
        )
    console.print(table)


def render_letter(console: Console, letter: StoredDeadLetter) -> None:
    """Every header of one dead letter, then its body."""
    console.print(
        Text(f"{letter.dlq_topic}[{letter.partition}]@{letter.offset}", style="bold"),
        Text(f"  {letter.reason or '?'}", style="bold yellow"),
    )
    headers = Table(show_header=True, header_style="bold", box=None)
    headers.add_column("header", no_wrap=True)
    headers.add_column("value")
    for name, value in letter.headers:
        shown = "(null)" if value is None else value.decode("utf-8", errors="backslashreplace")
        headers.add_row(name, Text(shown))
    console.print(headers)
    console.print(Text(f"key: {letter.key!r}"))
    body = _body(letter)
    if "body_repr" in body:
        console.print(Text("body (not JSON):", style="bold"), Text(body["body_repr"]))
    else:
        console.print(Text("body:", style="bold"))
        console.print_json(json.dumps(body["body"], ensure_ascii=False))


def render_report(console: Console, report: ReplayReport, *, prefix: str = "") -> None:
    """What a replay did, or would do."""
    verb = "would replay" if report.dry_run else "replayed"
    if report.replayed:
        render_letters(
            console, report.replayed, title=f"{verb} {len(report.replayed)}", prefix=prefix
        )
    for letter in report.skipped:
        console.print(
            Text(f"skipped {letter.dlq_topic}[{letter.partition}]@{letter.offset}: "),
            Text("already replayed", style="dim"),
        )
    for letter, why in report.unreplayable:
        console.print(
            Text(f"cannot replay {letter.dlq_topic}[{letter.partition}]@{letter.offset}: "),
            Text(why, style="yellow"),
        )
    for letter, error in report.failed:
        console.print(
            Text(f"FAILED {letter.dlq_topic}[{letter.partition}]@{letter.offset}: ", style="red"),
            Text(error),
        )
    console.print(
        f"{verb} {len(report.replayed)}, skipped {len(report.skipped)} (already replayed), "
        f"unreplayable {len(report.unreplayable)}, failed {len(report.failed)}"
    )


# --- commands --------------------------------------------------------------------------------


@dlq_app.command("list")
def list_letters(
    topic: TopicOpt = None,
    reason: ReasonOpt = None,
    saga_id: SagaIdOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    as_json: JsonOpt = False,
    bootstrap_servers: BootstrapOpt = None,
    topic_prefix: TopicPrefixOpt = None,
) -> None:
    """List dead letters (read from the beginning of every dead-letter topic)."""
    filters = _filters(topic, reason, saga_id, since, until)
    settings = settings_from(bootstrap_servers=bootstrap_servers, topic_prefix=topic_prefix)
    letters = _run(settings, lambda admin: admin.list(filters))
    if as_json:
        _print_json([letter.as_dict() for letter in letters])
        return
    render_letters(
        Console(highlight=False),
        letters,
        title=f"{len(letters)} dead letter(s)",
        prefix=settings.kafka.topic_prefix,
    )


@dlq_app.command("show")
def show_letter(
    dlq_topic: Annotated[str, typer.Argument(help="The dead-letter topic (prefix included)")],
    partition: Annotated[int, typer.Argument(min=0, help="Its partition")],
    offset: Annotated[int, typer.Argument(min=0, help="The dead letter's offset")],
    as_json: JsonOpt = False,
    bootstrap_servers: BootstrapOpt = None,
    topic_prefix: TopicPrefixOpt = None,
) -> None:
    """Show one dead letter: every header, and the body (pretty JSON when it is JSON)."""
    settings = settings_from(bootstrap_servers=bootstrap_servers, topic_prefix=topic_prefix)
    prefix = settings.kafka.topic_prefix
    if prefix and not dlq_topic.startswith(prefix):
        dlq_topic = prefix + dlq_topic
    letter = _run(settings, lambda admin: admin.show(dlq_topic, partition, offset))
    if as_json:
        _print_json({**letter.as_dict(full=True), **_body(letter)})
        return
    render_letter(Console(highlight=False), letter)


@dlq_app.command("replay")
def replay_letters(
    topic: TopicOpt = None,
    reason: ReasonOpt = None,
    saga_id: SagaIdOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    replay_all: Annotated[
        bool, typer.Option("--all", help="Replay every dead letter (no filter given)")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be replayed; send nothing")
    ] = False,
    actor: Annotated[
        str | None, typer.Option("--actor", help="Who replays (recorded; default: $USER)")
    ] = None,
    as_json: JsonOpt = False,
    bootstrap_servers: BootstrapOpt = None,
    database_url: DatabaseOpt = None,
    topic_prefix: TopicPrefixOpt = None,
) -> None:
    """Send dead letters back to their original topics, each at most once ever.

    Exits 1 when a send failed (those are not recorded: run the replay again).
    """
    filters = _filters(topic, reason, saga_id, since, until)
    if filters == DeadLetterFilter() and not replay_all:
        raise typer.BadParameter("give a filter (--topic, --reason, ...) or --all")
    settings = settings_from(
        bootstrap_servers=bootstrap_servers, database_url=database_url, topic_prefix=topic_prefix
    )
    who = _actor(actor)
    report = _run(settings, lambda admin: admin.replay(filters, dry_run=dry_run, actor=who))
    if as_json:
        _print_json(report.as_dict())
    else:
        render_report(Console(highlight=False), report, prefix=settings.kafka.topic_prefix)
    if report.failed:
        raise typer.Exit(code=1)
