"""Services someone else runs (``SAGA_TEST_KAFKA_BOOTSTRAP``, ``SAGA_TEST_DATABASE_URL``).

Starting one only checks that it answers; stopping leaves it running.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from coordinator.devstack.errors import ServiceStartError
from coordinator.devstack.kafka_admin import wait_for_kafka
from coordinator.devstack.lifecycle import Lifecycle
from coordinator.devstack.postgres_admin import sqlalchemy_url, wait_for_postgres

if TYPE_CHECKING:
    pass

__all__ = ["ExternalKafka", "ExternalPostgres"]


class ExternalKafka(Lifecycle):
    """A broker at a known address; assumed to be Apache Kafka unless told otherwise."""

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        supports_idempotence: bool = True,
        startup_timeout: float = 15.0,
    ) -> None:
        self._bootstrap = bootstrap_servers
        self._supports_idempotence = supports_idempotence
        self.startup_timeout = startup_timeout
        self.startup_seconds: float | None = None

    @property
    def kind(self) -> Literal["external"]:
        return "external"

    @property
    def version(self) -> str:
        return "unknown"

    @property
    def supports_idempotence(self) -> bool:
        return self._supports_idempotence

    @property
    def bootstrap_servers(self) -> str:
        return self._bootstrap

    async def start(self) -> None:
        try:
            await wait_for_kafka(self._bootstrap, max_wait=self.startup_timeout)
        except TimeoutError as error:
            raise ServiceStartError(
                f"the external Kafka at {self._bootstrap} does not answer: {error}",
                service="kafka",
            ) from error
        self.startup_seconds = 0.0

    async def stop(self) -> None:
        return None


class ExternalPostgres(Lifecycle):
    """A server at a known URL; the URL's database serves as the maintenance database."""

    def __init__(self, url: str, *, startup_timeout: float = 15.0) -> None:
        self._url = sqlalchemy_url(url)
        self.startup_timeout = startup_timeout
        self.startup_seconds: float | None = None
        self._version: str | None = None

    @property
    def kind(self) -> Literal["external"]:
        return "external"

    @property
    def url(self) -> str:
        return self._url

    @property
    def version(self) -> str:
        if self._version is None:
            raise RuntimeError("ExternalPostgres is not started")
        return self._version

    async def start(self) -> None:
        try:
            self._version = await wait_for_postgres(self._url, max_wait=self.startup_timeout)
        except TimeoutError as error:
            raise ServiceStartError(
                f"the external PostgreSQL does not answer: {error}", service="postgres"
            ) from error
        self.startup_seconds = 0.0

    async def stop(self) -> None:
        return None
