"""Talking to a broker as an administrator: readiness and topic creation."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from coordinator.devstack.errors import DevStackError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

__all__ = ["TopicFactory", "create_topics", "wait_for_kafka"]

_logger = logging.getLogger(__name__)

_NO_ERROR = 0
_TOPIC_ALREADY_EXISTS = 36


async def wait_for_kafka(
    bootstrap_servers: str,
    *,
    max_wait: float = 30.0,
    is_alive: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Poll until the broker answers a metadata request; return the cluster description.

    Raises:
        TimeoutError: no answer within ``max_wait`` seconds.
        DevStackError: ``is_alive`` reports that the broker process has exited.
    """
    deadline = time.monotonic() + max_wait
    with _quiet_refused_connections():
        return await _poll_metadata(bootstrap_servers, deadline, max_wait, is_alive)


async def _poll_metadata(
    bootstrap_servers: str,
    deadline: float,
    max_wait: float,
    is_alive: Callable[[], bool] | None,
) -> dict[str, Any]:
    last_error: BaseException | None = None
    while True:
        if is_alive is not None and not is_alive():
            raise DevStackError(f"the broker at {bootstrap_servers} exited while starting")
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=5000)
        try:
            await admin.start()
            cluster: dict[str, Any] = await admin.describe_cluster()
            if cluster.get("brokers"):
                return cluster
        except Exception as error:  # any failure here means "not ready yet"
            last_error = error
        finally:
            with contextlib.suppress(Exception):
                await admin.close()
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"no metadata from {bootstrap_servers} within {max_wait:.0f} s "
                f"(last error: {last_error!r})"
            )
        await asyncio.sleep(0.2)


class _DropRefusedConnections(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Unable connect to")


@contextlib.contextmanager
def _quiet_refused_connections() -> Iterator[None]:
    # While the broker boots, aiokafka logs every refused connection at ERROR: expected noise.
    loggers = [logging.getLogger(name) for name in ("aiokafka", "aiokafka.client")]
    noise_filter = _DropRefusedConnections()
    for logger in loggers:
        logger.addFilter(noise_filter)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(noise_filter)


async def create_topics(
    bootstrap_servers: str,
    names: Iterable[str],
    partitions: int = 4,
    *,
    replication_factor: int = 1,
    max_wait: float = 30.0,
) -> None:
    """Create topics unless they exist, then wait until every partition has a leader.

    Idempotent. Works on Apache Kafka and on the embedded broker (both answer CreateTopics).

    Raises:
        DevStackError: the broker refused a topic, or an existing topic has another
            partition count.
        TimeoutError: partitions without a leader after ``max_wait`` seconds.
    """
    wanted = list(dict.fromkeys(names))
    if not wanted:
        return
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    try:
        await admin.start()
        response = await admin.create_topics(
            [NewTopic(name, partitions, replication_factor) for name in wanted],
            timeout_ms=int(max_wait * 1000),
        )
        for topic_error in response.topic_errors:
            name, code = topic_error[0], topic_error[1]
            if code not in (_NO_ERROR, _TOPIC_ALREADY_EXISTS):
                raise DevStackError(f"cannot create topic {name!r}: {tuple(topic_error)!r}")
        await _wait_for_leaders(admin, wanted, partitions, time.monotonic() + max_wait)
    finally:
        await admin.close()


async def _wait_for_leaders(
    admin: AIOKafkaAdminClient, names: list[str], partitions: int, deadline: float
) -> None:
    while True:
        described = await admin.describe_topics(names)
        pending = [name for name in names if name not in {t["topic"] for t in described}]
        for topic in described:
            found = topic["partitions"]
            if topic["error_code"] == _NO_ERROR and found and len(found) != partitions:
                raise DevStackError(
                    f"topic {topic['topic']!r} exists with {len(found)} partitions, "
                    f"not {partitions}"
                )
            if (
                topic["error_code"] != _NO_ERROR
                or len(found) != partitions
                or any(p["error_code"] != _NO_ERROR or p["leader"] < 0 for p in found)
            ):
                pending.append(topic["topic"])
        if not pending:
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"topics without leaders: {pending}")
        _logger.debug("waiting for leaders of %s", pending)
        await asyncio.sleep(0.1)


class TopicFactory(Protocol):
    """Creates topics under a per-test prefix; the ``fresh_topics`` fixture is one."""

    async def __call__(self, *names: str, partitions: int = 4) -> list[str]:
        """Create ``<prefix><name>`` for each name (idempotent); return the full names."""
        ...
