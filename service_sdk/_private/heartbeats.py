"""Heartbeats of a running participant: "alive, and working on these commands".

:class:`PickupLog` is the bookkeeping (no I/O): which commands' handlers started since the
last heartbeat that went out and have not been answered. :class:`HeartbeatPublisher` is the
loop that sends a :class:`~service_sdk.contract.Heartbeat` every interval through an injected
``send``, the first one at once, but only while the runner makes progress
(:class:`~service_sdk._private.progress.Progress`): a runner whose database is down, or whose
loop is stuck, withholds its heartbeats, so the coordinator stops counting it alive and the
deadlines of the commands it does not pick up run out.

A pickup is reported once: a heartbeat that went out clears what it listed; a heartbeat that
failed leaves it for the next one. A command answered before a heartbeat goes out is not
listed (its reply says enough). A deferred command, a handler still running, and a command
whose handler ran and was dead-lettered without a reply are listed (once).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable

from service_sdk._private.progress import Progress
from service_sdk.contract.envelope import Envelope
from service_sdk.contract.heartbeat import Heartbeat, PickedUpCommand
from service_sdk.retry import RetryLog, RetryPolicy, call_with_retries

__all__ = ["MAX_REPORTED", "HeartbeatPublisher", "PickupLog", "instance_id"]

logger = logging.getLogger(__name__)

MAX_REPORTED = 10_000
"""Most pickups one heartbeat lists (the contract's cap), and most the log keeps: when
heartbeats keep failing, the oldest pickups are dropped rather than kept without bound."""


def instance_id() -> str:
    """A unique id of this runner: ``<hostname>-<pid>-<8 hex digits>``."""
    return f"{socket.gethostname()[:150]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class PickupLog:
    """Commands whose handler started and that were not answered, not yet reported.

    Args:
        limit: Most pickups kept; the oldest are dropped beyond it.
        enabled: False keeps nothing (a runner without heartbeats).
    """

    def __init__(self, limit: int = MAX_REPORTED, *, enabled: bool = True) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._limit = limit
        self._enabled = enabled
        self._pending: dict[str, PickedUpCommand] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def started(self, command: Envelope) -> None:
        """The handler of ``command`` starts (a command without step or id is not reported:
        the coordinator could not match it to a step)."""
        if not self._enabled or not command.command_id or not command.step:
            return
        self._pending.pop(command.command_id, None)
        self._pending[command.command_id] = PickedUpCommand(
            saga_id=command.saga_id,
            saga_type=command.saga_type,
            step=command.step,
            command_id=command.command_id,
            attempt=command.attempt,
        )
        while len(self._pending) > self._limit:
            del self._pending[next(iter(self._pending))]

    def answered(self, command_id: str) -> None:
        """``command_id`` was answered (or tombstoned): its reply says more than a pickup."""
        self._pending.pop(command_id, None)

    def report(self) -> tuple[PickedUpCommand, ...]:
        """What the next heartbeat lists, oldest first."""
        return tuple(self._pending.values())

    def reported(self, pickups: tuple[PickedUpCommand, ...]) -> None:
        """A heartbeat listing ``pickups`` went out: forget them (unless picked up anew)."""
        for pickup in pickups:
            if self._pending.get(pickup.command_id) is pickup:
                del self._pending[pickup.command_id]


class HeartbeatPublisher:
    """Sends a heartbeat at once and then every ``interval_s`` until ``stop`` is set.

    A failed send is retried one interval later and logged at most once per 30 s (through
    :class:`~service_sdk.retry.RetryLog`). While ``progress`` says the runner is not live, a
    heartbeat due is withheld (its pickups wait for the next one that goes out); the first
    withheld one and the first sent again after it are logged. Cancellation ends the loop at
    once and propagates.

    Args:
        service: The service name.
        instance: This runner's unique id.
        interval_s: Seconds between heartbeats (more than 0).
        send: Publishes one heartbeat; raises when it was not acknowledged.
        pickups: The pickups to report.
        stop: Set when the runner stops.
        progress: Whether the runner makes progress; None sends every heartbeat.

    Attributes:
        sent: Heartbeats sent.
        withheld: Heartbeats withheld because the runner made no progress.
    """

    def __init__(
        self,
        *,
        service: str,
        instance: str,
        interval_s: float,
        send: Callable[[Heartbeat], Awaitable[None]],
        pickups: PickupLog,
        stop: asyncio.Event,
        progress: Progress | None = None,
    ) -> None:
        if not interval_s > 0:
            raise ValueError("interval_s must be more than 0")
        self.service = service
        self.instance = instance
        self.interval_s = interval_s
        self.sent = 0
        self.withheld = 0
        self._send = send
        self._pickups = pickups
        self._stop = stop
        self._progress = progress
        self._withholding = False
        self._retries = RetryPolicy(
            initial_backoff_s=interval_s, max_backoff_s=interval_s, multiplier=1.0
        )
        self._log = RetryLog(logger, f"service {service}: sending a heartbeat")

    async def beat(self) -> Heartbeat:
        """Send one heartbeat with the pickups not reported yet, and forget them once sent."""
        pickups = self._pickups.report()
        heartbeat = Heartbeat(service=self.service, instance=self.instance, in_progress=pickups)
        await self._send(heartbeat)
        self._pickups.reported(pickups)
        self.sent += 1
        return heartbeat

    async def beat_if_live(self) -> Heartbeat | None:
        """Send one heartbeat (:meth:`beat`) if the runner makes progress; else None."""
        why_not = self._progress.why_not() if self._progress is not None else None
        if why_not is not None:
            self.withheld += 1
            if not self._withholding:
                self._withholding = True
                logger.warning(
                    "service %s: withholding heartbeats while it makes no progress (%s)",
                    self.service,
                    why_not,
                )
            return None
        heartbeat = await self.beat()
        if self._withholding:
            self._withholding = False
            logger.info(
                "service %s: making progress again; heartbeats resumed after %d withheld",
                self.service,
                self.withheld,
            )
        return heartbeat

    async def run(self) -> None:
        """Send heartbeats until ``stop`` is set."""
        while not self._stop.is_set():
            try:
                await call_with_retries(
                    self.beat_if_live, self._retries, on_retry=self._log, stop=self._stop
                )
            except Exception:
                if self._stop.is_set():
                    return  # stopping while a send failed: nothing left to report to
                raise  # not reached: every failure is retried until stop
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=self.interval_s)
            except TimeoutError:
                continue
