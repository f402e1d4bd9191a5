"""Shared pytest setup: markers from folders, real Kafka and PostgreSQL for integration tests.

Services start lazily: a session-scoped fixture starts only when a collected test asks for it,
so ``pytest tests/unit`` starts nothing. Which services run is decided by
``coordinator.devstack.selection`` from ``SAGA_TEST_*`` variables (see its docstring).

Fixtures (all async ones run on the session event loop):

- ``kafka`` (session) -> ``KafkaService``: the started broker.
- ``kafka_bootstrap`` (session) -> ``str``: its ``host:port``.
- ``kafka_producer_settings`` / ``kafka_consumer_settings`` (session) -> ``dict[str, Any]``:
  kwargs for ``AIOKafkaProducer`` / ``AIOKafkaConsumer`` suited to the broker (include
  ``bootstrap_servers``).
- ``topic_prefix`` -> ``str``: unique per test, e.g. ``"t1a2b3c4d."``.
- ``fresh_topics`` -> ``TopicFactory``: ``await fresh_topics("saga.replies", partitions=4)``
  creates ``<prefix>saga.replies`` and returns the full names.
- ``postgres`` (session) -> ``PostgresService``: the started server (``.url`` = maintenance DB).
- ``database_url`` -> ``str``: a fresh empty database for this test, dropped afterwards.
- ``db_engine`` -> ``AsyncEngine`` on ``database_url``, disposed afterwards.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from sqlalchemy.ext.asyncio import AsyncEngine

    from coordinator.devstack import KafkaService, PostgresService, TopicFactory

_TESTS_DIR = Path(__file__).parent
_FOLDER_MARKERS = {"unit": "unit", "integration": "integration", "chaos": "chaos"}
_SERVICES = pytest.StashKey[list[str]]()
_EMBEDDED_SKIP_REASON = (
    "SAGA_TEST_KAFKA=embedded: the embedded broker (Tansu) has no InitProducerId, "
    "so idempotent and transactional producers cannot work there"
)


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_SERVICES] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kafka_forced = os.environ.get("SAGA_TEST_KAFKA", "").strip().lower()
    for item in items:
        try:
            folder = item.path.relative_to(_TESTS_DIR).parts[0]
        except ValueError:
            folder = ""
        marker = _FOLDER_MARKERS.get(folder)
        if marker is not None:
            item.add_marker(marker)
        if kafka_forced == "embedded" and item.get_closest_marker("apache_kafka"):
            item.add_marker(pytest.mark.skip(reason=_EMBEDDED_SKIP_REASON))


def pytest_report_header(config: pytest.Config) -> list[str]:
    def setting(name: str) -> str:
        return f"{name}={os.environ.get(name) or 'auto'}"

    return [
        f"devstack: {setting('SAGA_TEST_KAFKA')}, {setting('SAGA_TEST_POSTGRES')} "
        "(services start only if a collected test needs them; summary at the end)"
    ]


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    services = config.stash.get(_SERVICES, [])
    if services:
        terminalreporter.section("devstack")
        for line in services:
            terminalreporter.write_line(line)


@pytest.fixture(autouse=True)
def _apache_kafka_required(request: pytest.FixtureRequest) -> None:
    """Tests marked ``apache_kafka`` fail (never skip) on a broker without idempotence."""
    if request.node.get_closest_marker("apache_kafka") is None:
        return
    broker: KafkaService = request.getfixturevalue("kafka")
    if not broker.supports_idempotence:
        pytest.fail(
            f"this test needs Apache Kafka, but the session broker is {broker.kind} "
            f"({broker.version}) without idempotent producers; set SAGA_TEST_KAFKA=apache "
            "(or SAGA_TEST_KAFKA=embedded to skip such tests on purpose)",
            pytrace=False,
        )


@pytest.fixture(scope="session")
async def kafka(pytestconfig: pytest.Config) -> AsyncIterator[KafkaService]:
    from coordinator.devstack import DevStackError, kafka_choice_from_env, kafka_from_choice

    failure = None
    try:
        choice = kafka_choice_from_env()
        service = kafka_from_choice(choice)
        await service.start()
    except DevStackError as error:
        failure = f"Kafka could not start: {error}"
    if failure is not None:
        pytest.fail(failure, pytrace=False)
    seconds = getattr(service, "startup_seconds", None) or 0.0
    pytestconfig.stash[_SERVICES].append(
        f"kafka: {service.kind} {service.version} at {service.bootstrap_servers}, "
        f"ready in {seconds:.1f} s ({choice.reason})"
    )
    try:
        yield service
    finally:
        await service.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka: KafkaService) -> str:
    return kafka.bootstrap_servers


@pytest.fixture(scope="session")
def kafka_producer_settings(kafka: KafkaService) -> dict[str, Any]:
    from coordinator.devstack import kafka_client_settings

    return kafka_client_settings(kafka)


@pytest.fixture(scope="session")
def kafka_consumer_settings(kafka: KafkaService) -> dict[str, Any]:
    from coordinator.devstack import kafka_consumer_settings

    return kafka_consumer_settings(kafka)


@pytest.fixture
def topic_prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}."


@pytest.fixture
def fresh_topics(kafka: KafkaService, topic_prefix: str) -> TopicFactory:
    from coordinator.devstack import create_topics

    async def make(*names: str, partitions: int = 4) -> list[str]:
        full = [f"{topic_prefix}{name}" for name in names]
        await create_topics(kafka.bootstrap_servers, full, partitions)
        return full

    return make


@pytest.fixture(scope="session")
async def postgres(pytestconfig: pytest.Config) -> AsyncIterator[PostgresService]:
    from coordinator.devstack import (
        DevStackError,
        postgres_choice_from_env,
        postgres_from_choice,
    )

    failure = None
    try:
        choice = postgres_choice_from_env()
        service = postgres_from_choice(choice)
        await service.start()
    except DevStackError as error:
        failure = f"PostgreSQL could not start: {error}"
    if failure is not None:
        pytest.fail(failure, pytrace=False)
    seconds = getattr(service, "startup_seconds", None) or 0.0
    pytestconfig.stash[_SERVICES].append(
        f"postgres: {service.kind} {service.version} at {service.url}, "
        f"ready in {seconds:.1f} s ({choice.reason})"
    )
    try:
        yield service
    finally:
        await service.stop()


@pytest.fixture
async def database_url(postgres: PostgresService) -> AsyncIterator[str]:
    from coordinator.devstack import create_database, drop_database

    name = f"test_{uuid.uuid4().hex[:8]}"
    url = await create_database(postgres.url, name)
    try:
        yield url
    finally:
        await drop_database(postgres.url, name)


@pytest.fixture
async def db_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(database_url)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
def span_exporter() -> Iterator[Any]:
    """An OpenTelemetry ``InMemorySpanExporter`` receiving every span ended during the test.

    The process-wide tracer provider is set once (OpenTelemetry allows no other); each test
    gets its own exporter, shut down afterwards.
    """
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()
