"""Housekeeping: deletes sent outbox rows, aged inbox entries and finished sagas past their
retention, in bounded chunks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import timedelta

from coordinator.config import HousekeepingSettings
from coordinator.core.clock import Clock
from coordinator.store.heartbeats import HeartbeatStore
from coordinator.store.retention import SagaRetention
from coordinator.store.saga_store import SagaStore
from service_sdk.retry import RetryLog, RetryPolicy, call_with_retries

__all__ = ["Housekeeper", "SweepResult"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepResult:
    """Rows one sweep deleted."""

    outbox: int
    inbox: int
    heartbeats: int = 0
    sagas: int = 0
    """Finished sagas deleted (their history with them)."""


class Housekeeper:
    """Keeps the outbox, the inbox and the saga store from growing without bound.

    Sent outbox rows are kept for ``outbox_retention_s`` (for inspection), inbox entries for
    ``inbox_retention_s`` (the de-duplication window), COMPLETED and COMPENSATED sagas with
    their history for ``saga_retention_s`` after they finished (FAILED and unfinished sagas
    stay). Each delete is bounded and claims rows with ``SKIP LOCKED``, so several coordinators
    may sweep at once and never wait on the hot path's locks.
    """

    def __init__(self, store: SagaStore, clock: Clock, settings: HousekeepingSettings) -> None:
        self._store = store
        self._clock = clock
        self._settings = settings
        self._heartbeats = HeartbeatStore()
        self._retention = SagaRetention()
        self._stopping = asyncio.Event()
        # A failed sweep is tried again an interval later: nothing is lost by waiting.
        self._retries = RetryPolicy(
            initial_backoff_s=settings.interval_s, max_backoff_s=settings.interval_s, multiplier=1.0
        )
        self._retry_log = RetryLog(logger, "housekeeping", level=logging.ERROR, exc_info=True)

    async def sweep_once(self) -> SweepResult:
        """Delete what has outlived its retention (until a chunk comes back short)."""
        now = self._clock.now()
        settings = self._settings
        outbox_cutoff = now - timedelta(seconds=settings.outbox_retention_s)
        inbox_cutoff = now - timedelta(seconds=settings.inbox_retention_s)
        outbox = inbox = 0
        while not self._stopping.is_set():
            async with self._store.engine.begin() as conn:
                count = await self._store.delete_sent_outbox(
                    conn, outbox_cutoff, settings.batch_size
                )
            outbox += count
            if count < settings.batch_size:
                break
        while not self._stopping.is_set():
            async with self._store.engine.begin() as conn:
                count = await self._store.delete_inbox(conn, inbox_cutoff, settings.batch_size)
            inbox += count
            if count < settings.batch_size:
                break
        sagas = 0
        if settings.saga_retention_s is not None:
            saga_cutoff = now - timedelta(seconds=settings.saga_retention_s)
            while not self._stopping.is_set():
                async with self._store.engine.begin() as conn:
                    count = await self._retention.delete_finished(
                        conn, saga_cutoff, settings.saga_batch_size
                    )
                sagas += count
                if count < settings.saga_batch_size:
                    break
        heartbeat_cutoff = now - timedelta(seconds=settings.heartbeat_retention_s)
        async with self._store.engine.begin() as conn:
            # One row per participant instance: a handful, deleted in one statement.
            heartbeats = await self._heartbeats.delete_older_than(conn, heartbeat_cutoff)
        if outbox or inbox or sagas:
            logger.info(
                "housekeeping deleted %d outbox rows, %d inbox entries and %d finished sagas",
                outbox,
                inbox,
                sagas,
            )
        return SweepResult(outbox, inbox, heartbeats, sagas)

    async def run(self) -> None:
        """Sweep every ``interval_s`` until :meth:`stop`."""
        while not self._stopping.is_set():
            try:
                await call_with_retries(
                    self.sweep_once, self._retries, on_retry=self._retry_log, stop=self._stopping
                )
            except Exception:
                if not self._stopping.is_set():
                    raise  # not reached: every failure is retried until stop
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._settings.interval_s)

    def stop(self) -> None:
        """Ask :meth:`run` to return."""
        self._stopping.set()
