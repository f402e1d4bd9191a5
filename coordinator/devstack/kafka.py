"""What every Kafka launcher offers, and the client settings that suit each broker."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Protocol, Self, runtime_checkable

if TYPE_CHECKING:
    from types import TracebackType

__all__ = [
    "KAFKA_KINDS",
    "KafkaKind",
    "KafkaService",
    "kafka_client_settings",
    "kafka_consumer_settings",
]

KafkaKind = Literal["apache", "embedded", "external", "container"]
KAFKA_KINDS: tuple[KafkaKind, ...] = ("apache", "embedded", "external", "container")


@runtime_checkable
class KafkaService(Protocol):
    """A running (or startable) Kafka-compatible broker."""

    @property
    def kind(self) -> KafkaKind:
        """Which launcher runs the broker."""
        ...

    @property
    def version(self) -> str:
        """The broker's version as far as the launcher knows it (for reports)."""
        ...

    @property
    def supports_idempotence(self) -> bool:
        """Whether ``InitProducerId`` works (idempotent and transactional producers)."""
        ...

    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` of the broker; raises ``RuntimeError`` before ``start()``."""
        ...

    async def start(self) -> None:
        """Start the broker and return once it answers metadata requests."""
        ...

    async def stop(self) -> None:
        """Stop the broker and remove its data; safe to call twice."""
        ...

    async def __aenter__(self) -> Self:
        """Start and return self."""
        ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop."""
        ...


def kafka_client_settings(service: KafkaService) -> dict[str, Any]:
    """Keyword arguments for ``AIOKafkaProducer`` that suit the broker.

    Idempotence (which implies ``acks="all"``) wherever the broker supports it; the embedded
    broker fails ``InitProducerId``, so there we keep ``acks="all"`` without idempotence.
    """
    settings: dict[str, Any] = {"bootstrap_servers": service.bootstrap_servers, "acks": "all"}
    settings["enable_idempotence"] = service.supports_idempotence
    return settings


def kafka_consumer_settings(service: KafkaService) -> dict[str, Any]:
    """Keyword arguments for ``AIOKafkaConsumer`` that suit the broker.

    The embedded broker ignores ``LeaveGroup``: a departed member holds its partitions until its
    session expires, so a short session timeout keeps hand-overs fast (about 2 x the timeout).
    Apache Kafka rejects sessions under ``group.min.session.timeout.ms`` (6 s) and needs none of it.
    """
    settings: dict[str, Any] = {"bootstrap_servers": service.bootstrap_servers}
    if service.kind == "embedded":
        settings |= {
            "session_timeout_ms": 3000,
            "heartbeat_interval_ms": 500,
            "rebalance_timeout_ms": 3000,
        }
    return settings
