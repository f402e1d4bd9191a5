"""Heartbeats mean "making progress": a runner whose retry loops fail, or whose loop is stuck,
withholds them (no I/O: a fake clock and a fake sender)."""

from __future__ import annotations

import asyncio
from typing import ClassVar

import pytest

from service_sdk import Command
from service_sdk._private.heartbeats import HeartbeatPublisher, PickupLog
from service_sdk._private.progress import Progress
from service_sdk.contract import Heartbeat
from service_sdk.retry import RetryEvent
from service_sdk.testing import command_envelope
from tests.support.waiting import eventually


class Reserve(Command):
    message_type: ClassVar[str] = "progress.reserve"
    sku: str


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Sender:
    def __init__(self) -> None:
        self.sent: list[Heartbeat] = []

    async def __call__(self, heartbeat: Heartbeat) -> None:
        self.sent.append(heartbeat)


def _event(error: Exception) -> RetryEvent:
    return RetryEvent(attempt=1, error=error, wait_s=0.1, max_attempts=None)


def test_a_runner_that_advanced_recently_and_fails_nowhere_is_live() -> None:
    clock = FakeClock()
    progress = Progress(6.0, clock=clock)
    assert progress.live()
    clock.now += 6.0
    assert progress.live()
    clock.now += 0.1
    assert not progress.live()
    assert progress.why_not() == "no progress for 6.1 s"
    progress.advanced()
    assert progress.live()


def test_a_failing_retry_loop_makes_it_not_live_until_it_recovers() -> None:
    clock = FakeClock()
    progress = Progress(6.0, clock=clock)
    logged: list[RetryEvent] = []
    hook = progress.on_retry("database", logged.append)
    hook(_event(ConnectionRefusedError(111, "refused")))
    progress.advanced()  # polls go on; commands do not
    assert not progress.live()
    assert progress.why_not() == "database: ConnectionRefusedError(111, 'refused')"
    assert len(logged) == 1
    progress.failing("publishing")
    progress.recovered("database")
    assert not progress.live()
    progress.recovered("publishing")
    progress.recovered("never-failed")
    assert progress.live()


def test_the_stall_window_must_be_positive() -> None:
    with pytest.raises(ValueError, match="more than 0"):
        Progress(0)


async def test_heartbeats_are_withheld_while_the_database_retry_loop_fails() -> None:
    clock = FakeClock()
    progress = Progress(6.0, clock=clock)
    stop = asyncio.Event()
    pickups = PickupLog()
    send = Sender()
    publisher = HeartbeatPublisher(
        service="stock",
        instance="i-1",
        interval_s=0.01,
        send=send,
        pickups=pickups,
        stop=stop,
        progress=progress,
    )
    task = asyncio.create_task(publisher.run())
    try:
        await eventually(lambda: len(send.sent) >= 2, interval=0.01, what="heartbeats")
        progress.on_retry("database")(_event(ConnectionRefusedError(111, "refused")))
        await eventually(lambda: publisher.withheld >= 1, interval=0.01, what="one withheld")
        sent = len(send.sent)
        pickups.started(
            command_envelope(Reserve(sku="A"), saga_id="s1", step="reserve", command_id="x")
        )
        await eventually(lambda: publisher.withheld >= 5, interval=0.01, what="more withheld")
        assert len(send.sent) == sent  # at most one was in flight when it began to fail
        progress.recovered("database")
        await eventually(lambda: len(send.sent) > sent, interval=0.01, what="heartbeats again")
    finally:
        stop.set()
        await task
    # The pickup waited for the first heartbeat that went out again.
    assert [p.command_id for p in send.sent[sent].in_progress] == ["x"]


async def test_heartbeats_are_withheld_while_the_loop_is_stuck() -> None:
    clock = FakeClock()
    progress = Progress(6.0, clock=clock)
    stop = asyncio.Event()
    send = Sender()
    publisher = HeartbeatPublisher(
        service="stock",
        instance="i-1",
        interval_s=0.01,
        send=send,
        pickups=PickupLog(),
        stop=stop,
        progress=progress,
    )
    task = asyncio.create_task(publisher.run())
    try:
        await eventually(lambda: send.sent, interval=0.01, what="a heartbeat")
        clock.now += 7.0  # no poll, no command for longer than the stall window
        await eventually(lambda: publisher.withheld >= 3, interval=0.01, what="withheld")
        sent = len(send.sent)
        await eventually(lambda: publisher.withheld >= 6, interval=0.01, what="more withheld")
        assert len(send.sent) == sent
        progress.advanced()
        await eventually(lambda: len(send.sent) > sent, interval=0.01, what="heartbeats again")
    finally:
        stop.set()
        await task
