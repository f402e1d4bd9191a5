"""The log formats: JSON lines with the saga's coordinates, or text with them appended."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from coordinator.observability.logs import LogFormat, configure_logging, envelope_extra
from service_sdk import Envelope, MessageKind


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def _lines(stream: io.StringIO) -> list[str]:
    return [line for line in stream.getvalue().splitlines() if line]


@pytest.mark.usefixtures("restore_logging")
def test_json_lines_carry_the_saga_coordinates_when_present() -> None:
    stream = io.StringIO()
    configure_logging("JSON", level=logging.DEBUG, stream=stream)
    log = logging.getLogger("coordinator.test")
    log.info("plain %s", "line")
    log.warning(
        "dead-lettering",
        extra={"saga_id": "s-1", "step": "pay", "message_id": "m-1", "command_id": None},
    )
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed", extra={"saga_id": "s-2"})
    plain, lettered, failed = (json.loads(line) for line in _lines(stream))
    assert set(plain) == {"timestamp", "level", "logger", "message"}
    assert plain["message"] == "plain line"
    assert plain["level"] == "INFO"
    assert plain["logger"] == "coordinator.test"
    assert plain["timestamp"].endswith("+00:00")
    assert lettered["saga_id"] == "s-1"
    assert (lettered["step"], lettered["message_id"]) == ("pay", "m-1")
    assert "command_id" not in lettered
    assert failed["saga_id"] == "s-2"
    assert "ValueError: boom" in failed["exception"]


@pytest.mark.usefixtures("restore_logging")
def test_text_lines_append_the_coordinates() -> None:
    stream = io.StringIO()
    configure_logging(LogFormat.TEXT, stream=stream)
    envelope = Envelope(
        kind=MessageKind.REPLY,
        message_type="t",
        saga_id="s-1",
        saga_type="order",
        step="pay",
        message_id="m-1",
    )
    logging.getLogger("x").info("hello", extra=envelope_extra(envelope))
    logging.getLogger("x").debug("hidden at INFO")
    (line,) = _lines(stream)
    assert line.endswith("x: hello [saga_id=s-1 saga_type=order step=pay message_id=m-1]")


@pytest.mark.usefixtures("restore_logging")
def test_configuring_twice_does_not_double_lines_and_bad_formats_fail() -> None:
    stream = io.StringIO()
    configure_logging("text", stream=stream)
    configure_logging("text", stream=stream)
    logging.getLogger("x").warning("once")
    assert len(_lines(stream)) == 1
    with pytest.raises(ValueError, match="xml"):
        configure_logging("xml", stream=stream)
