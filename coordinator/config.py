"""The coordinator's configuration: one pydantic-settings ``Settings`` with nested sections.

Only the CLI builds a ``Settings`` from the environment (``SAGA_`` prefix, ``__`` between a
section and its field, e.g. ``SAGA_KAFKA__BOOTSTRAP_SERVERS``); components receive the typed
sections they need.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from coordinator.core.admission import AdmissionLimits

__all__ = [
    "AdmissionSettings",
    "DatabaseSettings",
    "DeadlineSettings",
    "HousekeepingSettings",
    "HttpSettings",
    "KafkaSettings",
    "MetricsSettings",
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
    liveness_window_s: float = Field(
        default=10.0,
        gt=0,
        description="A service heard from (heartbeat) within this window is alive: a command "
        "it has not picked up yet is queued, and its deadline is postponed, not missed.",
    )


class AdmissionSettings(BaseModel):
    """Admission control: caps on sagas in flight (None: no cap). Starts beyond a cap wait
    (QUEUED, or unread in saga.requests) until capacity frees up."""

    max_in_flight: int | None = Field(default=1_000, ge=1)
    max_in_flight_per_type: dict[str, int] = Field(default_factory=dict)
    max_outstanding_per_service: dict[str, int] = Field(default_factory=dict)
    default_max_outstanding_per_service: int | None = Field(default=None, ge=1)
    queued_high_water: int = Field(
        default=2_000,
        ge=1,
        description="Stop reading saga.requests while this many sagas are QUEUED: Kafka "
        "keeps the rest of a spike.",
    )
    interval_s: float = Field(
        default=0.5, gt=0, description="How often QUEUED sagas are looked at."
    )
    batch_size: int = Field(default=500, ge=1)

    def limits(self) -> AdmissionLimits:
        """The caps as the core's pure value."""
        return AdmissionLimits(
            max_in_flight=self.max_in_flight,
            max_in_flight_per_type=dict(self.max_in_flight_per_type),
            max_outstanding_per_service=dict(self.max_outstanding_per_service),
            default_max_outstanding_per_service=self.default_max_outstanding_per_service,
        )


class HousekeepingSettings(BaseModel):
    """Deleting what is no longer needed: sent outbox rows and old inbox entries."""

    interval_s: float = Field(default=60.0, gt=0)
    outbox_retention_s: float = Field(default=3_600.0, ge=0)
    inbox_retention_s: float = Field(
        default=7 * 86_400.0,
        gt=0,
        description="How long a processed message id is remembered for de-duplication.",
    )
    heartbeat_retention_s: float = Field(
        default=86_400.0, gt=0, description="Participant instances not heard from are forgotten."
    )
    batch_size: int = Field(default=10_000, ge=1)


class HttpSettings(BaseModel):
    """The HTTP API (``coordinator.api.app``): start, inspect, retry and abort sagas.

    Mutating endpoints need ``Authorization: Bearer <token>``; with no token configured they
    are refused (403), never open. Reads, ``/health`` and ``/ready`` need no token.
    """

    # All interfaces: the coordinator runs in a container behind a service/load balancer.
    host: str = "0.0.0.0"
    port: int | None = Field(
        default=8080,
        ge=0,
        le=65_535,
        description="None (env: empty, 'none' or 'off') disables the API; 0 picks a free port.",
    )
    token: SecretStr | None = None

    @field_validator("port", mode="before")
    @classmethod
    def _port_off(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in ("", "none", "off"):
            return None
        return value


class MetricsSettings(BaseModel):
    """The Prometheus endpoint and the gauges sampled from the database."""

    port: int | None = Field(
        default=9464,
        ge=0,
        le=65_535,
        description="Port of /metrics; None (env: empty, 'none' or 'off') turns it off.",
    )
    # All interfaces: Prometheus scrapes the pod/container from outside.
    host: str = "0.0.0.0"
    refresh_interval_s: float = Field(
        default=15.0,
        gt=0,
        description="How often the database gauges (sagas by status, outbox, overdue sagas) "
        "and the consumer lag are sampled.",
    )
    overdue_grace_s: float = Field(
        default=30.0,
        ge=0,
        description="A saga whose deadline passed longer ago than this counts as overdue.",
    )

    @field_validator("port", mode="before")
    @classmethod
    def _port_off(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in ("", "none", "off"):
            return None
        return value


class Settings(BaseSettings):
    """All of the coordinator's settings."""

    model_config = SettingsConfigDict(env_prefix="SAGA_", env_nested_delimiter="__", extra="ignore")

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    relay: RelaySettings = Field(default_factory=RelaySettings)
    deadlines: DeadlineSettings = Field(default_factory=DeadlineSettings)
    admission: AdmissionSettings = Field(default_factory=AdmissionSettings)
    housekeeping: HousekeepingSettings = Field(default_factory=HousekeepingSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    shutdown_grace_s: float = Field(default=10.0, gt=0)
    registry: str = Field(
        default="saga_defs:default_registry",
        description="The saga definitions to run, as 'package.module:attribute' naming a "
        "SagaRegistry or a function returning one [env SAGA_REGISTRY].",
    )
