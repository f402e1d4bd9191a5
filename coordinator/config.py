"""The coordinator's configuration: one pydantic-settings ``Settings`` with nested sections.

Only the CLI builds a ``Settings`` from the environment (``SAGA_`` prefix, ``__`` between a
section and its field, e.g. ``SAGA_KAFKA__BOOTSTRAP_SERVERS``); components receive the typed
sections they need.
"""

from __future__ import annotations

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "DatabaseSettings",
    "DeadlineSettings",
    "KafkaSettings",
    "RelaySettings",
    "Settings",
]


class KafkaSettings(BaseModel):
    """How the coordinator talks to Kafka."""

    bootstrap_servers: str = "127.0.0.1:9092"
    idempotent: bool = Field(
        default=True,
        description="Idempotent producer (acks=all). Turn off only for brokers without "
        "InitProducerId support, such as the embedded demo broker.",
    )
    client_id: str = "saga-coordinator"
    group_id: str = "saga-coordinator"
    topic_prefix: str = ""
    max_batch: int = Field(default=500, ge=1, le=10_000)
    poll_timeout_ms: int = Field(default=200, ge=1)
    session_timeout_ms: int = Field(default=10_000, ge=1_000)
    heartbeat_interval_ms: int = Field(default=3_000, ge=100)
    reply_partitions: int = Field(default=8, ge=1)
    command_partitions: int = Field(default=8, ge=1)
    create_topics: bool = True


class DatabaseSettings(BaseModel):
    """The PostgreSQL holding saga state."""

    url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/saga"
    pool_size: int = Field(default=10, ge=1)


class RelaySettings(BaseModel):
    """The outbox relay."""

    batch_size: int = Field(default=1_000, ge=1)
    sweep_interval_s: float = Field(default=1.0, gt=0)


class DeadlineSettings(BaseModel):
    """The deadline scanner."""

    scan_interval_s: float = Field(default=0.5, gt=0)
    batch_size: int = Field(default=200, ge=1)


class Settings(BaseSettings):
    """All of the coordinator's settings."""

    model_config = SettingsConfigDict(env_prefix="SAGA_", env_nested_delimiter="__", extra="ignore")

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    relay: RelaySettings = Field(default_factory=RelaySettings)
    deadlines: DeadlineSettings = Field(default_factory=DeadlineSettings)
    shutdown_grace_s: float = Field(default=10.0, gt=0)
