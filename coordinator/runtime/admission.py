"""The admitter: lets QUEUED sagas go, oldest first, as capacity frees up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from coordinator.config import AdmissionSettings
from coordinator.core.clock import Clock
from coordinator.core.definition import SagaRegistry
from coordinator.core.machine import apply
from coordinator.core.state import AdmitSaga, Transition
from coordinator.store.admission import AdmissionStore
from coordinator.store.persist import persist
from coordinator.store.saga_store import SagaStore
from service_sdk.contract import Topics
from service_sdk.retry import RetryLog, RetryPolicy, call_with_retries

__all__ = ["Admitter"]

logger = logging.getLogger(__name__)


class Admitter:
    """Admits QUEUED sagas within the caps; woken when sagas end, and every ``interval_s``.

    ``backlog`` is the number of QUEUED sagas seen last; the reply consumer stops reading
    start requests while it is at the high-water mark, so a spike waits in Kafka.
    """

    def __init__(
        self,
        store: SagaStore,
        registry: SagaRegistry,
        topics: Topics,
        clock: Clock,
        settings: AdmissionSettings,
        *,
        on_commit: Callable[[list[Transition]], None] | None = None,
    ) -> None:
        self._store = store
        self._registry = registry
        self._topics = topics
        self._clock = clock
        self._settings = settings
        self._limits = settings.limits()
        self._queries = AdmissionStore()
        self._on_commit = on_commit
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._retries = RetryPolicy(
            initial_backoff_s=settings.interval_s, max_backoff_s=5.0, multiplier=2.0
        )
        self._retry_log = RetryLog(logger, "admission", level=logging.ERROR, exc_info=True)
        self.backlog = 0
        self.admitted = 0

    @property
    def saturated(self) -> bool:
        """True while the QUEUED backlog is at the high-water mark."""
        return self.backlog >= self._settings.queued_high_water

    def wake(self) -> None:
        """Look at the queue now (sagas ended, so capacity may have freed up)."""
        self._wake.set()

    async def admit_once(self) -> int:
        """Admit what fits, up to one batch; returns how many sagas were admitted."""
        now = self._clock.now()
        transitions: list[Transition] = []
        async with self._store.transaction() as conn:
            # Counted before the lock too: woken after most batches, it usually finds no
            # queue, and then need not make the other coordinators' admissions wait.
            backlog = await self._queries.count_queued(conn)
            if backlog:
                await self._queries.lock(conn)
                backlog = await self._queries.count_queued(conn)
            if backlog:
                in_flight = await self._queries.count_in_flight(conn)
                room = in_flight.room(self._limits)
                limit = (
                    self._settings.batch_size
                    if room is None
                    else min(room, self._settings.batch_size)
                )
                for instance in await self._queries.claim_queued(conn, limit) if limit else []:
                    if not self._registry.has(instance.saga_type, instance.definition_version):
                        continue  # a coordinator that runs this type and version admits it
                    definition = self._registry.get(instance.saga_type, instance.definition_version)
                    service = definition.entry_service()
                    if not in_flight.has_room(self._limits, instance.saga_type, service):
                        continue
                    in_flight.add(instance.saga_type, service)
                    transitions.append(apply(definition, instance, AdmitSaga(), now))
                if transitions:
                    await persist(
                        self._store,
                        conn,
                        self._topics,
                        [t.instance for t in transitions],
                        transitions,
                        now,
                        registry=self._registry,
                    )
            self.backlog = backlog - len(transitions)
        self.admitted += len(transitions)
        if transitions and self._on_commit is not None:
            self._on_commit(transitions)
        return len(transitions)

    async def run(self) -> None:
        """Admit until stopped: at once again after a full batch, else on wake or interval."""
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                admitted = await call_with_retries(
                    self.admit_once, self._retries, on_retry=self._retry_log, stop=self._stopping
                )
            except Exception:
                if not self._stopping.is_set():
                    raise  # not reached: every failure is retried until stop
                return
            if admitted >= self._settings.batch_size:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._settings.interval_s)

    def stop(self) -> None:
        """Ask :meth:`run` to return after the current round."""
        self._stopping.set()
        self._wake.set()
