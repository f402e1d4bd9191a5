"""A single-node Apache Kafka (KRaft) broker run from the official jars, fetched with Maven.

The jars live in a cache outside the repository (``~/.cache/saga-coordinator/kafka-<version>``),
fetched once under a file lock; each broker gets fresh ports and a scratch directory.
"""

from __future__ import annotations

import asyncio
import base64
import fcntl
import logging
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from coordinator.devstack.errors import (
    DevStackError,
    PrerequisiteMissingError,
    ServiceStartError,
)
from coordinator.devstack.kafka_admin import wait_for_kafka
from coordinator.devstack.ports import LOOPBACK, free_ports
from coordinator.devstack.process import ManagedProcess, make_scratch_dir
from coordinator.devstack.scratch_server import ScratchServer

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "KAFKA_VERSION",
    "LOG4J_VERSION",
    "ApacheKafka",
    "KafkaDistribution",
    "default_kafka_cache_dir",
    "new_cluster_id",
    "render_kafka_pom",
    "render_log4j2_properties",
    "render_server_properties",
]

_logger = logging.getLogger(__name__)

KAFKA_VERSION = "4.1.1"
LOG4J_VERSION = "2.24.3"
_INSTALL_HINT = (
    "install them from Debian: apt-get install -y openjdk-17-jre-headless maven "
    "(or run the tests with SAGA_TEST_KAFKA=embedded)"
)


def default_kafka_cache_dir(env: Mapping[str, str], version: str = KAFKA_VERSION) -> Path:
    """``$SAGA_KAFKA_CACHE`` if set, else ``~/.cache/saga-coordinator/kafka-<version>``."""
    override = env.get("SAGA_KAFKA_CACHE")
    if override:
        return Path(override).expanduser()
    return Path("~/.cache/saga-coordinator").expanduser() / f"kafka-{version}"


def render_kafka_pom(version: str = KAFKA_VERSION, log4j_version: str = LOG4J_VERSION) -> str:
    """A pom whose runtime dependencies are the broker plus a log4j2 binding for slf4j 1.7."""
    deps = [
        ("org.apache.kafka", "kafka_2.13", version),
        ("org.apache.logging.log4j", "log4j-slf4j-impl", log4j_version),
        ("org.apache.logging.log4j", "log4j-core", log4j_version),
    ]
    dependencies = "".join(
        f"    <dependency><groupId>{g}</groupId><artifactId>{a}</artifactId>"
        f"<version>{v}</version></dependency>\n"
        for g, a, v in deps
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<project xmlns="http://maven.apache.org/POM/4.0.0">\n'
        "  <modelVersion>4.0.0</modelVersion>\n"
        "  <groupId>local.saga-coordinator</groupId>\n"
        f"  <artifactId>kafka-runtime</artifactId>\n  <version>{version}</version>\n"
        "  <packaging>pom</packaging>\n"
        f"  <dependencies>\n{dependencies}  </dependencies>\n"
        "</project>\n"
    )


def render_server_properties(
    *,
    port: int,
    controller_port: int,
    data_dir: Path,
    num_partitions: int = 4,
    host: str = LOOPBACK,
    extra: Mapping[str, str] | None = None,
) -> str:
    """``server.properties`` of a combined broker+controller node; ``extra`` overrides."""
    props: dict[str, str] = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{host}:{controller_port}",
        "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{host}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(data_dir),
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        # Tests may use sessions of a few seconds, for fast failover (the broker default: 6 s).
        "group.min.session.timeout.ms": "1000",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "num.partitions": str(num_partitions),
        "auto.create.topics.enable": "true",
    }
    props.update(extra or {})
    return "".join(f"{key}={value}\n" for key, value in props.items())


def render_log4j2_properties(level: str = "warn") -> str:
    """A log4j2 configuration: one console appender, root logger at ``level``."""
    return (
        "status = warn\n"
        "appender.console.type = Console\n"
        "appender.console.name = STDOUT\n"
        "appender.console.layout.type = PatternLayout\n"
        "appender.console.layout.pattern = [%d] %p %m (%c)%n\n"
        f"rootLogger.level = {level}\n"
        "rootLogger.appenderRef.stdout.ref = STDOUT\n"
    )


def new_cluster_id() -> str:
    """What ``StorageTool random-uuid`` prints, without paying for a JVM start.

    Kafka's ``Uuid.randomUuid()``: 16 random bytes, URL-safe base64 without padding, never
    starting with ``-`` (it would read as a command-line flag).
    """
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):
            return text


class KafkaDistribution:
    """The broker's jars in a local cache directory, fetched with Maven on first use."""

    def __init__(self, cache_dir: Path, version: str = KAFKA_VERSION) -> None:
        self.cache_dir = cache_dir
        self.version = version

    @property
    def libs_dir(self) -> Path:
        return self.cache_dir / "libs"

    @property
    def classpath(self) -> str:
        return f"{self.libs_dir}/*"

    @property
    def _marker(self) -> Path:
        return self.cache_dir / "libs.complete"

    def is_fetched(self) -> bool:
        return self._marker.exists()

    def fetch(self) -> bool:
        """Download the jars unless present (True if this call downloaded them).

        Concurrent callers, in this process or another, wait for the first one.
        """
        if self.is_fetched():
            return False
        mvn = shutil.which("mvn")
        if mvn is None:
            raise PrerequisiteMissingError(f"Maven (mvn) is needed to fetch Kafka; {_INSTALL_HINT}")
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with (self.cache_dir / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.is_fetched():
                return False
            shutil.rmtree(self.libs_dir, ignore_errors=True)
            pom = self.cache_dir / "pom.xml"
            pom.write_text(render_kafka_pom(self.version))
            _logger.info("fetching Apache Kafka %s jars into %s", self.version, self.libs_dir)
            argv = [mvn, "-B", "-q", "-f", str(pom), "dependency:copy-dependencies"]
            argv += ["-DincludeScope=runtime", f"-DoutputDirectory={self.libs_dir}"]
            result = subprocess.run(
                argv, cwd=self.cache_dir, capture_output=True, text=True, check=False
            )
            if result.returncode != 0:
                output = (result.stdout + result.stderr).strip().splitlines()
                raise DevStackError(
                    f"mvn could not fetch Apache Kafka {self.version} (exit {result.returncode}):\n"
                    + "\n".join(output[-30:])
                )
            self._marker.write_text(self.version + "\n")
            return True


class ApacheKafka(ScratchServer):
    """One KRaft node (broker + controller) on loopback, data in a scratch directory.

    Restartable: :meth:`halt` / :meth:`kill` and :meth:`restart` run the node again on the
    same log directories and ports.
    """

    restartable = True

    def __init__(
        self,
        distribution: KafkaDistribution | None = None,
        *,
        num_partitions: int = 4,
        heap_mb: int = 512,
        startup_timeout: float = 30.0,
        extra_properties: Mapping[str, str] | None = None,
        java: str = "java",
    ) -> None:
        self.distribution = distribution or KafkaDistribution(default_kafka_cache_dir(os.environ))
        self.num_partitions = num_partitions
        self.heap_mb = heap_mb
        self.extra_properties = dict(extra_properties or {})
        self.java = java
        self._java_path = ""
        super().__init__(startup_timeout=startup_timeout)

    @property
    def kind(self) -> Literal["apache"]:
        return "apache"

    @property
    def version(self) -> str:
        return self.distribution.version

    @property
    def supports_idempotence(self) -> bool:
        return True

    @property
    def bootstrap_servers(self) -> str:
        return self._started_address()

    def _check_prerequisites(self) -> None:
        java = shutil.which(self.java)
        if java is None:
            raise PrerequisiteMissingError(f"Java 17+ is needed to run Kafka; {_INSTALL_HINT}")
        self._java_path = java

    async def _launch(self) -> str:
        java = self._java_path
        await asyncio.to_thread(self.distribution.fetch)
        port, controller_port = free_ports(2)
        self._workdir = make_scratch_dir("saga-kafka-")
        properties = await asyncio.to_thread(self._write_config, port, controller_port)
        await asyncio.to_thread(self._format_storage, java, properties)
        self._process = ManagedProcess(
            "kafka",
            [
                java,
                f"-Xms{self.heap_mb}m",
                f"-Xmx{self.heap_mb}m",
                "-cp",
                self.distribution.classpath,
                f"-Dlog4j2.configurationFile={self._workdir / 'log4j2.properties'}",
                "kafka.Kafka",
                str(properties),
            ],
            log_path=self._workdir / "kafka.log",
            cwd=self._workdir,
        )
        self._process.spawn()
        bootstrap = f"{LOOPBACK}:{port}"
        await self._await_serving(bootstrap)
        return bootstrap

    async def _await_serving(self, address: str) -> None:
        assert self._process is not None
        await self._wait_ready(
            wait_for_kafka(
                address, max_wait=self.startup_timeout, is_alive=self._process.is_running
            ),
            f"Apache Kafka {self.version}",
            "kafka",
        )

    def _write_config(self, port: int, controller_port: int) -> Path:
        assert self._workdir is not None
        (self._workdir / "log4j2.properties").write_text(render_log4j2_properties())
        properties = self._workdir / "server.properties"
        properties.write_text(
            render_server_properties(
                port=port,
                controller_port=controller_port,
                data_dir=self._workdir / "data",
                num_partitions=self.num_partitions,
                extra=self.extra_properties,
            )
        )
        return properties

    def _format_storage(self, java: str, properties: Path) -> None:
        assert self._workdir is not None
        # A short-lived tool: the C1 compiler and serial GC start faster.
        argv = [java, "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"]
        argv += ["-cp", self.distribution.classpath]
        argv += [f"-Dlog4j2.configurationFile={self._workdir / 'log4j2.properties'}"]
        argv += ["kafka.tools.StorageTool", "format", "-t", new_cluster_id()]
        argv += ["-c", str(properties), "--ignore-formatted"]
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        except FileNotFoundError as error:
            raise PrerequisiteMissingError(f"cannot run {java}; {_INSTALL_HINT}") from error
        if result.returncode != 0:
            raise ServiceStartError(
                f"kafka-storage format failed (exit {result.returncode})",
                service="kafka-storage",
                log_tail=(result.stdout + result.stderr)[-4000:],
            )
