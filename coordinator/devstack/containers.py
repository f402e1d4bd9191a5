"""Kafka and PostgreSQL in Docker containers (testcontainers), where a Docker engine answers.

``testcontainers``' own ``KafkaContainer`` drives Confluent's image through its start scripts;
the ``apache/kafka`` image is configured by ``KAFKA_*`` environment variables instead, so we run
it as a plain container on a host port chosen up front (the advertised listener must name it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import warnings
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from coordinator.devstack.errors import ServiceStartError
from coordinator.devstack.kafka_admin import wait_for_kafka
from coordinator.devstack.lifecycle import Lifecycle
from coordinator.devstack.ports import free_port
from coordinator.devstack.postgres_admin import sqlalchemy_url, wait_for_postgres

if TYPE_CHECKING:
    pass

__all__ = [
    "DEFAULT_KAFKA_IMAGE",
    "DEFAULT_POSTGRES_IMAGE",
    "ContainerKafka",
    "ContainerPostgres",
    "docker_available",
]

DEFAULT_KAFKA_IMAGE = "apache/kafka:4.1.1"
DEFAULT_POSTGRES_IMAGE = "postgres:17"


def docker_available(timeout: float = 2.0, docker_host: str | None = None) -> bool:
    """Whether a Docker engine answers ``GET /_ping`` within ``timeout`` seconds.

    Speaks HTTP on the socket itself: the docker library leaks a socket (a ResourceWarning,
    an error under ``-W error``) when the engine is absent. Reads ``DOCKER_HOST`` (``unix://``
    or plain ``tcp://``; TLS endpoints count as absent), default ``/var/run/docker.sock``.
    """
    host = docker_host or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    parsed = urlsplit(host)
    try:
        if parsed.scheme == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(parsed.path)
            except OSError:
                sock.close()
                raise
        elif parsed.scheme == "tcp" and parsed.hostname:
            sock = socket.create_connection((parsed.hostname, parsed.port or 2375), timeout)
        else:
            return False
        with sock:
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            status_line = sock.recv(64).split(b"\r\n", 1)[0]
    except OSError:
        return False
    return status_line.startswith(b"HTTP/1.") and b" 200" in status_line


class ContainerKafka(Lifecycle):
    """A single-node Apache Kafka container (KRaft)."""

    def __init__(
        self,
        image: str = DEFAULT_KAFKA_IMAGE,
        *,
        num_partitions: int = 4,
        startup_timeout: float = 60.0,
    ) -> None:
        self.image = image
        self.num_partitions = num_partitions
        self.startup_timeout = startup_timeout
        self.startup_seconds: float | None = None
        self._bootstrap: str | None = None
        self._container: Any = None

    @property
    def kind(self) -> Literal["container"]:
        return "container"

    @property
    def version(self) -> str:
        return self.image.rpartition(":")[2] or "latest"

    @property
    def supports_idempotence(self) -> bool:
        return True

    @property
    def bootstrap_servers(self) -> str:
        if self._bootstrap is None:
            raise RuntimeError("ContainerKafka is not started")
        return self._bootstrap

    async def start(self) -> None:
        if self._bootstrap is not None:
            return
        began = time.monotonic()
        try:
            bootstrap = await asyncio.to_thread(self._start_container)
            await wait_for_kafka(bootstrap, max_wait=self.startup_timeout)
        except BaseException as error:
            logs = self._logs()
            await self.stop()
            if isinstance(error, Exception):
                raise ServiceStartError(
                    f"the Kafka container ({self.image}) did not start: {error}",
                    service="kafka",
                    log_tail=logs,
                ) from error
            raise
        self._bootstrap = bootstrap
        self.startup_seconds = time.monotonic() - began

    def _start_container(self) -> str:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from testcontainers.core.container import DockerContainer

        host_port = free_port()
        container = DockerContainer(self.image)
        host = str(container.get_docker_client().host())
        container.with_bind_ports(9092, host_port)
        env = {
            "KAFKA_NODE_ID": "1",
            "KAFKA_PROCESS_ROLES": "broker,controller",
            "KAFKA_LISTENERS": "PLAINTEXT://0.0.0.0:9092,CONTROLLER://localhost:9093",
            "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://{host}:{host_port}",
            "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
            "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9093",
            "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
            "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
            "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
            "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR": "1",
            "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR": "1",
            "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
            "KAFKA_NUM_PARTITIONS": str(self.num_partitions),
            "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "true",
        }
        for key, value in env.items():
            container.with_env(key, value)
        self._container = container
        container.start()
        return f"{host}:{host_port}"

    def _logs(self) -> str:
        if self._container is None:
            return ""
        with contextlib.suppress(Exception):
            stdout, stderr = self._container.get_logs()
            return str((stdout + stderr).decode("utf-8", "replace"))[-4000:]
        return ""

    async def stop(self) -> None:
        self._bootstrap = None
        container, self._container = self._container, None
        if container is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(container.stop)


class ContainerPostgres(Lifecycle):
    """A PostgreSQL container."""

    def __init__(self, image: str = DEFAULT_POSTGRES_IMAGE, *, startup_timeout: float = 60.0):
        self.image = image
        self.startup_timeout = startup_timeout
        self.startup_seconds: float | None = None
        self._url: str | None = None
        self._version: str | None = None
        self._container: Any = None

    @property
    def kind(self) -> Literal["container"]:
        return "container"

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("ContainerPostgres is not started")
        return self._url

    @property
    def version(self) -> str:
        if self._version is None:
            raise RuntimeError("ContainerPostgres is not started")
        return self._version

    async def start(self) -> None:
        if self._url is not None:
            return
        began = time.monotonic()
        try:
            url = await asyncio.to_thread(self._start_container)
            self._version = await wait_for_postgres(url, max_wait=self.startup_timeout)
        except BaseException as error:
            await self.stop()
            if isinstance(error, Exception):
                raise ServiceStartError(
                    f"the PostgreSQL container ({self.image}) did not start: {error}",
                    service="postgres",
                ) from error
            raise
        self._url = url
        self.startup_seconds = time.monotonic() - began

    def _start_container(self) -> str:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from testcontainers.community.postgres import PostgresContainer

        container = PostgresContainer(self.image, driver="asyncpg")
        self._container = container
        container.start()
        return sqlalchemy_url(str(container.get_connection_url()))

    async def stop(self) -> None:
        self._url = None
        container, self._container = self._container, None
        if container is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(container.stop)
