"""Running the demo's components as separate OS processes, and the participant entry point."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from coordinator.config import Settings
from coordinator.store.database import create_engine

__all__ = ["ChildProcess", "run_participant"]

logger = logging.getLogger(__name__)


class ChildProcess:
    """A ``python -m coordinator ...`` child with its output in a log file."""

    def __init__(self, name: str, args: Sequence[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self._args = list(args)
        self._env = env
        self.log_path = log_dir / f"{name}.log"
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Spawn the child in its own session, so a terminal's Ctrl-C reaches only us.

        A child started again under the same name (a restarted participant instance) appends
        to its predecessor's log, which keeps the evidence of how that one ended.
        """
        with self.log_path.open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "coordinator",
                *self._args,
                env=self._env,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def returncode(self) -> int | None:
        """The exit code, or None while running."""
        return None if self._process is None else self._process.returncode

    def kill(self) -> None:
        """SIGKILL the child (the crash a chaos test wants)."""
        if self._process is not None and self._process.returncode is None:
            self._process.kill()

    async def stop(self, grace_s: float = 15.0) -> int | None:
        """SIGTERM, wait up to ``grace_s`` for a clean exit, then SIGKILL."""
        process = self._process
        if process is None or process.returncode is not None:
            return None if process is None else process.returncode
        process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(grace_s):
                return await process.wait()
        except TimeoutError:
            logger.warning("%s did not stop within %.0fs; killing it", self.name, grace_s)
            process.kill()
            return await process.wait()

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the child's output."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def child_env(settings: Settings, metrics_port: int | None = None) -> dict[str, str]:
    """The environment that points a child at the same Kafka and PostgreSQL.

    ``metrics_port`` is where the child serves ``/metrics`` (on loopback); None turns the
    endpoint off, so children on one host never fight over the default port.
    """
    env = dict(os.environ)
    env["SAGA_METRICS__PORT"] = "off" if metrics_port is None else str(metrics_port)
    env["SAGA_METRICS__HOST"] = "127.0.0.1"
    env["SAGA_METRICS__REFRESH_INTERVAL_S"] = str(settings.metrics.refresh_interval_s)
    env["SAGA_KAFKA__BOOTSTRAP_SERVERS"] = settings.kafka.bootstrap_servers
    env["SAGA_KAFKA__IDEMPOTENT"] = "true" if settings.kafka.idempotent else "false"
    env["SAGA_KAFKA__TOPIC_PREFIX"] = settings.kafka.topic_prefix
    env["SAGA_KAFKA__GROUP_ID"] = settings.kafka.group_id
    env["SAGA_DATABASE__URL"] = settings.database.url
    env["SAGA_EVENTS__PUBLISH"] = settings.events.publish.value
    # The HTTP API on a free local port each: several coordinators may run side by side.
    env["SAGA_HTTP__HOST"] = "127.0.0.1"
    env["SAGA_HTTP__PORT"] = "0"
    return env


async def run_participant(
    name: str,
    settings: Settings,
    install_signals: Callable[[asyncio.Event], None],
    *,
    handler_delay_s: float = 0.0,
) -> None:
    """Run the example participant ``name`` until a signal sets the stop event.

    ``trip`` runs every participant of the trip saga in this one process (a runner and a
    consumer group per service, without per-service metrics: they would share names).
    ``handler_delay_s`` slows every command down (see :mod:`coordinator.demo.participants.pace`).
    """
    from prometheus_client import CollectorRegistry

    from coordinator.demo.participants import PARTICIPANTS, Participant
    from coordinator.demo.participants.pace import pace
    from coordinator.demo.participants.trip import TRIP_PARTICIPANTS
    from coordinator.observability.metrics import serve_metrics
    from service_sdk import KafkaConfig, ServiceMetrics, ServiceRunner, Topics

    known: dict[str, Participant] = {**PARTICIPANTS, **TRIP_PARTICIPANTS}
    if name == "trip":
        chosen = dict(TRIP_PARTICIPANTS)
    elif name in known:
        chosen = {name: known[name]}
    else:
        choices = sorted([*known, "trip"])
        raise SystemExit(f"unknown participant {name!r}; one of {choices}")
    pace.delay_s = handler_delay_s
    # No pre-ping (a round trip per transaction): the runner retries a stale connection's
    # transient error after a database restart, on a fresh connection.
    engine = create_engine(
        settings.database.url, pool_size=5 if len(chosen) == 1 else 10, pre_ping=False
    )
    topics = Topics(settings.kafka.topic_prefix)
    try:
        registry = CollectorRegistry()
        runners = [
            ServiceRunner(
                module.service,
                # Its tables are created in the runner's start-up transaction, which waits out
                # a database that is down or still recovering instead of crashing.
                setup=module.install,
                kafka=KafkaConfig(
                    bootstrap_servers=settings.kafka.bootstrap_servers,
                    idempotent=settings.kafka.idempotent,
                    client_id=f"{service}-service",
                ),
                engine=engine,
                topics=topics,
                group_id=f"{settings.kafka.topic_prefix}{service}-service",
                observer=ServiceMetrics(
                    registry,
                    service,
                    message_types=module.service.message_types,
                    topic=topics.commands(service),
                )
                if len(chosen) == 1
                else None,
            )
            for service, module in chosen.items()
        ]
        stop = asyncio.Event()
        install_signals(stop)
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(serve_metrics(registry, settings.metrics))
            for runner in runners:
                await stack.enter_async_context(runner)
            logger.info("participant %s running (%s)", name, ", ".join(chosen))
            await stop.wait()
    finally:
        await engine.dispose()
