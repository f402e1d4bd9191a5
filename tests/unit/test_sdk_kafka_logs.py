"""Rate-limiting aiokafka's per-attempt error lines (no I/O: records made by hand)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from service_sdk.kafka_logs import KAFKA_LOGGER, LogThrottle, throttle_kafka_logs

UNABLE = "Unable connect to node with id %s: %s"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _record(
    msg: str = UNABLE, level: int = logging.ERROR, name: str = KAFKA_LOGGER
) -> logging.LogRecord:
    return logging.LogRecord(name, level, "client.py", 435, msg, (1, "Connect call failed"), None)


def test_a_repeated_line_passes_once_per_interval_and_then_says_how_many_were_dropped() -> None:
    clock = FakeClock()
    throttle = LogThrottle(30.0, clock=clock)
    passed = []
    for _ in range(19_000):  # the outage of the issue: ~19,000 lines in 28 s
        record = _record()
        if throttle.filter(record):
            passed.append(record)
        clock.now += 28 / 19_000
    assert len(passed) == 1
    assert passed[0].getMessage() == "Unable connect to node with id 1: Connect call failed"
    assert throttle.suppressed == 18_999

    clock.now += 5
    later = _record()
    assert throttle.filter(later)
    assert later.getMessage() == (
        "Unable connect to node with id 1: Connect call failed (18999 more like it in the last 33 s)"
    )
    after = _record()
    assert not throttle.filter(after)


def test_lines_of_other_templates_levels_or_loggers_are_not_alike() -> None:
    throttle = LogThrottle(30.0, clock=FakeClock())
    assert throttle.filter(_record())
    assert throttle.filter(_record('Unable connect to "%s:%s": %s'))
    assert throttle.filter(_record(level=logging.WARNING))
    assert throttle.filter(_record(name="aiokafka.conn"))
    assert not throttle.filter(_record())


def test_lines_below_the_level_pass_untouched() -> None:
    throttle = LogThrottle(30.0, clock=FakeClock())
    for _ in range(3):
        record = _record(level=logging.INFO)
        assert throttle.filter(record)
        assert record.msg == UNABLE
    assert throttle.suppressed == 0


def test_the_interval_cannot_be_negative() -> None:
    with pytest.raises(ValueError, match="at least 0"):
        LogThrottle(-1)


@pytest.fixture
def kafka_loggers() -> Iterator[list[logging.Logger]]:
    import aiokafka.conn  # noqa: F401 (creates the aiokafka.conn logger)

    loggers = [logging.getLogger(KAFKA_LOGGER), logging.getLogger("aiokafka.conn")]
    every = [logging.getLogger(name) for name in list(logging.Logger.manager.loggerDict)]
    before = {logger.name: list(logger.filters) for logger in every}
    yield loggers
    for logger in every:  # the throttle is process-wide: leave no trace of this test
        logger.filters[:] = before[logger.name]


def test_the_shared_throttle_quiets_every_aiokafka_logger(
    kafka_loggers: list[logging.Logger], caplog: pytest.LogCaptureFixture
) -> None:
    throttle = throttle_kafka_logs()
    assert throttle_kafka_logs() is throttle
    for logger in kafka_loggers:
        assert logger.filters.count(throttle) == 1
    # A template of its own, so that what other tests logged does not count.
    template = "probe %s of the shared throttle: %s"
    with caplog.at_level(logging.ERROR, logger=KAFKA_LOGGER):
        for attempt in range(500):
            for logger in kafka_loggers:
                logger.error(template, attempt, "refused")
    lines = [r for r in caplog.records if r.msg == template]
    assert [(r.name, r.getMessage()) for r in lines] == [
        (KAFKA_LOGGER, "probe 0 of the shared throttle: refused"),
        ("aiokafka.conn", "probe 0 of the shared throttle: refused"),
    ]
