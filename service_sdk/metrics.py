"""Prometheus metrics of a participant service, and the ``/metrics`` endpoint of any process.

:class:`ServiceMetrics` implements :class:`~service_sdk.observer.RunnerObserver`; pass it to the
runner as ``observer``. :class:`MetricsServer` serves a registry over HTTP. Both take a
``CollectorRegistry`` so tests can use a fresh one::

    registry = CollectorRegistry()
    runner = ServiceRunner(payment, kafka=..., engine=..., observer=ServiceMetrics(registry, "payment"))
    async with MetricsServer(registry, port=9464), runner:
        await runner.wait()

Exposed (``saga_`` prefix, base units, no per-saga labels):

- ``saga_participant_commands_total{service, message_type, result}``: commands answered or
  recognised; ``result`` is ``success``, ``failure``, ``retryable``, ``deferred``,
  ``duplicate``, ``pending``, ``fenced`` (refused by a tombstone), ``tombstoned`` (an undo
  that found its command had not taken effect) or ``unfenceable`` (a fence that found it had).
- ``saga_participant_handler_duration_seconds{service, message_type}``: the database
  transaction around a handler run (duplicates, pending re-deliveries and the answers that
  tombstones decide excluded).
- ``saga_participant_handler_errors_total{service, message_type}``: handler runs that raised
  an unexpected error (each is retried, then dead-lettered).
- ``saga_dead_letters_total{topic, reason}``: records sent to ``<topic>.dlq`` (the coordinator
  exposes the same metric for its own topics).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterable
from types import TracebackType
from typing import Self
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from service_sdk.contract.reasons import DeadLetterReason

__all__ = ["DEAD_LETTER_REASONS", "HANDLER_DURATION_BUCKETS", "MetricsServer", "ServiceMetrics"]

logger = logging.getLogger(__name__)

HANDLER_DURATION_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
"""Seconds; handlers are database work, milliseconds when healthy."""

_NOT_A_HANDLER_RUN = frozenset({"duplicate", "pending", "fenced", "tombstoned", "unfenceable"})

DEAD_LETTER_REASONS = (
    DeadLetterReason.MALFORMED,
    DeadLetterReason.SCHEMA,
    DeadLetterReason.UNKNOWN_TYPE,
    DeadLetterReason.HANDLER_ERROR,
    DeadLetterReason.UNSENDABLE,
)
"""The reasons :class:`~service_sdk.ServiceRunner` dead-letters a command (or, ``unsendable``,
the reply to one: counted against the commands topic) with."""


class ServiceMetrics:
    """The metrics of one participant service; a :class:`~service_sdk.RunnerObserver`.

    Args:
        registry: Where the metrics are registered (a fresh one per test).
        service: The service's name, the ``service`` label of every metric.
        message_types: The commands the service handles (``Service.message_types``).
        topic: The commands topic the runner consumes (``ServiceRunner.topic``).

    The error and dead-letter counters of the given message types and topic start at zero:
    a counter that appears with its first increment hides that increment from ``increase()``,
    and an alert on it would never fire for the first dead letter.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        service: str,
        *,
        message_types: Iterable[str] = (),
        topic: str | None = None,
    ) -> None:
        self._service = service
        self.commands = Counter(
            "saga_participant_commands_total",
            "Commands answered or recognised by a participant, by result.",
            ["service", "message_type", "result"],
            registry=registry,
        )
        self.handler_duration = Histogram(
            "saga_participant_handler_duration_seconds",
            "Duration of the database transaction around a handler run.",
            ["service", "message_type"],
            buckets=HANDLER_DURATION_BUCKETS,
            registry=registry,
        )
        self.handler_errors = Counter(
            "saga_participant_handler_errors_total",
            "Handler runs that raised an unexpected error.",
            ["service", "message_type"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "saga_dead_letters_total",
            "Records sent to the dead-letter topic of their topic, by reason.",
            ["topic", "reason"],
            registry=registry,
        )
        for message_type in message_types:
            self.handler_errors.labels(service, message_type)
        if topic is not None:
            for reason in DEAD_LETTER_REASONS:
                self.dead_letters.labels(topic, reason)

    def command_processed(self, message_type: str, result: str, duration_s: float) -> None:
        """Count the command and, for a handler run, observe its duration."""
        self.commands.labels(self._service, message_type, result).inc()
        if result not in _NOT_A_HANDLER_RUN:
            self.handler_duration.labels(self._service, message_type).observe(duration_s)

    def handler_failed(self, message_type: str, attempt: int) -> None:
        """Count a handler run that raised."""
        self.handler_errors.labels(self._service, message_type).inc()

    def dead_lettered(self, topic: str, reason: str) -> None:
        """Count a dead letter of ``topic``."""
        self.dead_letters.labels(topic, reason).inc()


class MetricsServer:
    """Serves ``registry`` in the Prometheus text format over HTTP (any path; ``/metrics``
    by convention), from a background thread so a busy event loop never delays a scrape.

    Args:
        registry: The metrics to serve.
        host: The address to bind (loopback by default); ``0.0.0.0`` for every interface.
        port: The port; 0 picks a free one (read :attr:`port` after :meth:`start`).
    """

    def __init__(
        self, registry: CollectorRegistry, *, host: str = "127.0.0.1", port: int = 9464
    ) -> None:
        self._registry = registry
        self._host = host
        self._port = port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port served (the one picked when 0 was asked for, once started)."""
        if self._server is not None:
            return int(self._server.server_port)
        return self._port

    async def start(self) -> None:
        """Bind the port and start serving.

        Raises:
            OSError: The port cannot be bound (e.g. another process holds it).
        """
        if self._server is not None:
            return
        self._server, self._thread = start_http_server(
            self._port, addr=self._host, registry=self._registry
        )
        logger.info("serving metrics on http://%s:%d/metrics", self._host, self.port)

    async def stop(self) -> None:
        """Stop serving and release the port. Idempotent."""
        server, self._server = self._server, None
        thread, self._thread = self._thread, None
        if server is None:
            return
        # shutdown() waits for the serving loop to notice (up to its 0.5 s poll interval).
        await asyncio.to_thread(server.shutdown)
        server.server_close()
        if thread is not None:
            await asyncio.to_thread(thread.join, 5.0)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
