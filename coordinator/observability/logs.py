"""Process-wide logging setup: JSON lines for log shippers, or text for a terminal.

Only the CLI calls :func:`configure_logging` (``--log-format json|text``, env
``SAGA_LOG_FORMAT``). Components log with ``logging.getLogger(__name__)`` and pass the saga's
coordinates as ``extra={"saga_id": ..., "step": ..., "message_id": ..., "command_id": ...}``;
both formats show those fields when a record carries them, so one saga's lines can be found
with a single filter.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, TextIO

from coordinator.core.state import HistoryKind
from service_sdk.contract import Envelope

if TYPE_CHECKING:
    from coordinator.core.state import SagaInstance, Transition

__all__ = [
    "CONTEXT_FIELDS",
    "JsonFormatter",
    "LogFormat",
    "TextFormatter",
    "configure_logging",
    "envelope_extra",
    "log_transitions",
    "log_unexpected_replies",
]

CONTEXT_FIELDS = ("saga_id", "saga_type", "step", "message_id", "command_id", "attempt", "trace_id")
"""The ``extra`` fields a log line shows when the record carries them (and not None)."""

_QUIET_LOGGERS = {"aiokafka": logging.WARNING, "uvicorn.access": logging.WARNING}
"""Libraries whose INFO lines are noise at a coordinator's volume."""


class LogFormat(StrEnum):
    """How log lines are written."""

    JSON = "json"
    TEXT = "text"


def envelope_extra(envelope: Envelope, **more: Any) -> dict[str, Any]:
    """The ``extra`` mapping that ties a log line to ``envelope``'s saga, step and message."""
    extra: dict[str, Any] = {
        "saga_id": envelope.saga_id,
        "saga_type": envelope.saga_type,
        "step": envelope.step,
        "message_id": envelope.message_id,
        "command_id": envelope.command_id,
    }
    extra.update(more)
    return extra


def _context(record: logging.LogRecord) -> dict[str, Any]:
    values = record.__dict__
    return {name: values[name] for name in CONTEXT_FIELDS if values.get(name) is not None}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``timestamp`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, the context fields present, and ``exception`` with the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(_context(record))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        # default=str: an extra value of an odd type must not cost the log line.
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message [saga_id=... step=...]`` for people at a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        context = _context(record)
        if context:
            text += " [" + " ".join(f"{k}={v}" for k, v in context.items()) + "]"
        return text


def configure_logging(
    log_format: LogFormat | str = LogFormat.TEXT,
    *,
    level: int = logging.INFO,
    stream: TextIO | None = None,
    quiet: Mapping[str, int] | None = None,
) -> logging.Handler:
    """Send every log record of the process to ``stream`` (stderr) in ``log_format``.

    Replaces the root logger's handlers, so calling it twice does not double the lines.

    Args:
        log_format: ``json`` or ``text``.
        level: The root logger's level.
        stream: Where lines go; stderr when None.
        quiet: Logger levels to set besides (defaults: aiokafka and uvicorn's access log
            at WARNING).

    Returns:
        The installed handler.

    Raises:
        ValueError: ``log_format`` is neither ``json`` nor ``text``.
    """
    chosen = LogFormat(str(log_format).strip().lower())
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if chosen is LogFormat.JSON else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name, name_level in (_QUIET_LOGGERS if quiet is None else quiet).items():
        logging.getLogger(name).setLevel(name_level)
    return handler


def log_unexpected_replies(
    logger: logging.Logger, transitions: Iterable[tuple[SagaInstance | None, Transition]]
) -> None:
    """One INFO line per stale or late reply, with why it changed nothing.

    A participant whose replies never match (a wrong ``step``, a made-up ``command_id``)
    leaves its sagas waiting for their deadlines: this line is how its team finds out.
    """
    if not logger.isEnabledFor(logging.INFO):
        return
    for _, transition in transitions:
        instance = transition.instance
        for entry in transition.history:
            if entry.kind not in (HistoryKind.STALE_REPLY, HistoryKind.LATE_REPLY):
                continue
            detail = entry.detail
            reason = detail.get("reason") or (
                f"the saga gave up on this step ({detail.get('undone_by', 'settled')})"
            )
            logger.info(
                "saga %s: %s reply %s (step %s, command %s, attempt %s) changed nothing: %s; "
                "the saga awaits step %s, command %s",
                instance.saga_id,
                entry.kind.value.removesuffix("_reply"),
                entry.message_id,
                entry.step,
                detail.get("command_id"),
                detail.get("attempt"),
                reason,
                instance.current_step,
                instance.command_id,
                extra={
                    "saga_id": instance.saga_id,
                    "saga_type": instance.saga_type,
                    "step": entry.step,
                    "message_id": entry.message_id,
                    "command_id": detail.get("command_id"),
                },
            )


def log_transitions(
    logger: logging.Logger,
    transitions: Iterable[tuple[SagaInstance | None, Transition]],
    *,
    level: int = logging.DEBUG,
    cause: str = "applied",
) -> None:
    """One line per engine decision, with the saga's coordinates as extras.

    The processor logs its decisions at DEBUG; the deadline scanner its firings at INFO.
    """
    if not logger.isEnabledFor(level):
        return
    for before, transition in transitions:
        instance = transition.instance
        entry = transition.history[0] if transition.history else None
        logger.log(
            level,
            "saga %s %s: %s -> %s [%s]; %d command(s)",
            instance.saga_id,
            cause,
            before.status.value if before is not None else "new",
            instance.status.value,
            ",".join(e.kind.value for e in transition.history),
            len(transition.commands),
            extra={
                "saga_id": instance.saga_id,
                "saga_type": instance.saga_type,
                "step": (entry.step if entry is not None else None) or instance.current_step,
                "message_id": entry.message_id if entry is not None else None,
                "command_id": instance.command_id,
                "attempt": instance.attempt or None,
            },
        )
