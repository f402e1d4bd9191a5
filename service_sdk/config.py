"""Typed Kafka settings of a participant service.

The SDK never reads the environment: the service's composition root builds a
:class:`KafkaConfig` from its own settings and passes it in.
"""

from __future__ import annotations

import ssl
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from service_sdk.partitioner import KeyPartitioner

__all__ = ["KafkaConfig"]


@dataclass(frozen=True)
class KafkaConfig:
    """How a participant connects to Kafka.

    Args:
        bootstrap_servers: ``host:port[,host:port...]`` of the brokers.
        idempotent: Ask for the idempotent producer (no duplicates from producer retries).
            Turn it off only for brokers that lack ``InitProducerId`` (the embedded broker).
        client_id: Shown in broker logs and quotas; aiokafka's default when None.
        security_protocol: ``PLAINTEXT``, ``SSL``, ``SASL_PLAINTEXT`` or ``SASL_SSL``.
        ssl_context: TLS context for the ``SSL`` and ``SASL_SSL`` protocols.
        sasl_mechanism: E.g. ``PLAIN`` or ``SCRAM-SHA-512``.
        sasl_plain_username: SASL user name.
        sasl_plain_password: SASL password (kept out of ``repr``).
        session_timeout_ms: Consumer group session timeout; aiokafka's default when None.
        heartbeat_interval_ms: Consumer heartbeat interval; aiokafka's default when None.
        rebalance_timeout_ms: Consumer rebalance timeout; aiokafka's default when None.
        max_request_size: The largest record the producer sends (key, body and headers; keep
            it at or below the brokers' ``message.max.bytes``). A reply larger than this is
            dead-lettered and answered by a small stand-in (see
            :mod:`service_sdk.contract.undeliverable`).
    """

    bootstrap_servers: str
    _: KW_ONLY
    idempotent: bool = True
    client_id: str | None = None
    security_protocol: str = "PLAINTEXT"
    ssl_context: ssl.SSLContext | None = None
    sasl_mechanism: str | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: str | None = field(default=None, repr=False)
    session_timeout_ms: int | None = None
    heartbeat_interval_ms: int | None = None
    rebalance_timeout_ms: int | None = None
    max_request_size: int = 1_048_576

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments every aiokafka client (producer, consumer, admin) takes."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
        }
        if self.client_id is not None:
            kwargs["client_id"] = self.client_id
        if self.ssl_context is not None:
            kwargs["ssl_context"] = self.ssl_context
        if self.sasl_mechanism is not None:
            kwargs["sasl_mechanism"] = self.sasl_mechanism
        if self.sasl_plain_username is not None:
            kwargs["sasl_plain_username"] = self.sasl_plain_username
        if self.sasl_plain_password is not None:
            kwargs["sasl_plain_password"] = self.sasl_plain_password
        return kwargs

    def producer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``AIOKafkaProducer``.

        Replies are acknowledged by all in-sync replicas either way (aiokafka's default of
        ``acks=1`` loses a reply when the leader dies right after answering).
        """
        return {
            **self.client_kwargs(),
            "acks": "all",
            "enable_idempotence": self.idempotent,
            "max_request_size": self.max_request_size,
            # Kafka's partitioning (murmur2 of the key) without aiokafka's per-record cost.
            "partitioner": KeyPartitioner(),
        }

    def consumer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``AIOKafkaConsumer`` (group id, offsets and commits are the
        runner's)."""
        kwargs = self.client_kwargs()
        for name in ("session_timeout_ms", "heartbeat_interval_ms", "rebalance_timeout_ms"):
            value = getattr(self, name)
            if value is not None:
                kwargs[name] = value
        return kwargs
