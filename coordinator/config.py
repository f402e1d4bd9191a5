"""The coordinator's configuration: one pydantic-settings ``Settings`` with nested sections.

Only the CLI builds a ``Settings`` from the environment (``SAGA_`` prefix, ``__`` between a
section and its field, e.g. ``SAGA_KAFKA__BOOTSTRAP_SERVERS``); components receive the typed
sections they need.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from coordinator.core.admission import AdmissionLimits
from coordinator.core.schedule import CatchUp, Cron, ScheduledSaga, ScheduleError
from coordinator.core.state import LifecyclePublishing

__all__ = [
    "AdmissionSettings",
    "DatabaseSettings",
    "DeadlineSettings",
    "HousekeepingSettings",
    "HttpSettings",
    "KafkaSettings",
    "MetricsSettings",
    "RelaySettings",
    "ScheduleConfig",
    "ScheduleSettings",
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
    session_timeout_ms: int = Field(
        default=6_000,
        ge=1_000,
        description="How soon a dead coordinator's partitions move to another instance. 6 s is "
        "the broker's default minimum (group.min.session.timeout.ms); lower it there first.",
    )
    heartbeat_interval_ms: int = Field(
        default=300,
        ge=100,
        description="How soon the other coordinators learn of a rebalance (a SIGTERM handover).",
    )
    commit_interval_ms: int = Field(
        default=200,
        ge=0,
        description="The longest a processed record waits for its offset commit (0: commit "
        "after every batch). A crash re-reads at most this much; the inbox de-duplicates it.",
    )
    reply_partitions: int = Field(default=8, ge=1)
    command_partitions: int = Field(default=8, ge=1)
    create_topics: bool = True
    max_message_bytes: int = Field(
        default=1_000_000,
        ge=1_024,
        description="The largest Kafka record (body, key and headers) the coordinator "
        "produces; keep it at or below the brokers' message.max.bytes. The HTTP API refuses "
        "a start whose request would exceed it.",
    )


class DatabaseSettings(BaseModel):
    """The PostgreSQL holding saga state."""

    url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/saga"
    pool_size: int = Field(default=10, ge=1)


class RelaySettings(BaseModel):
    """The outbox relay."""

    batch_size: int = Field(default=1_000, ge=1)
    sweep_interval_s: float = Field(default=1.0, gt=0)


class EventSettings(BaseModel):
    """Lifecycle events on ``saga.events``."""

    publish: LifecyclePublishing = Field(
        default=LifecyclePublishing.ALL,
        description="Which lifecycle events are published: 'all'; 'outcomes' (saga.started "
        "and the terminal ones: five messages per three-step saga become two); 'none' "
        "[env SAGA_EVENTS__PUBLISH].",
    )


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
    """Deleting what is no longer needed: sent outbox rows, old inbox entries, and finished
    sagas past their retention."""

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
    saga_retention_s: float | None = Field(
        default=30 * 86_400.0,
        gt=0,
        description="COMPLETED and COMPENSATED sagas (with their history) are deleted this "
        "long after they finished; None (env: empty, 'none' or 'off') keeps them forever. "
        "FAILED and unfinished sagas are never deleted.",
    )
    saga_batch_size: int = Field(
        default=1_000, ge=1, description="Sagas deleted per transaction (with their history)."
    )

    @field_validator("saga_retention_s", mode="before")
    @classmethod
    def _retention_off(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in ("", "none", "off"):
            return None
        return value


class ConsoleSettings(BaseModel):
    """The web console under ``/ui`` (``coordinator.api.ui``), served with the HTTP API.

    Operators log in with the API token; the console then keeps a signed session cookie
    (Secure, HttpOnly, SameSite=Strict) naming the actor its actions are attributed to.
    """

    enabled: bool = True
    open_reads: bool = Field(
        default=False,
        description="Serve the read-only pages without logging in (a trusted network only: "
        "saga data may hold personal data). Actions still need a login.",
    )
    secure_cookie: bool = Field(
        default=True,
        description="Mark the session cookie Secure. Browsers keep Secure cookies on "
        "http://localhost and 127.0.0.1 too; turn off only for plain HTTP on another host.",
    )
    session_ttl_s: int = Field(default=8 * 3_600, ge=60, le=30 * 86_400)
    refresh_interval_s: float = Field(
        default=3.0, gt=0, le=600, description="How often pages refresh while sagas run."
    )
    trace_url_template: str | None = Field(
        default=None,
        description="A link to a tracing UI, with '{trace_id}' for the saga's W3C trace id "
        "(e.g. 'http://localhost:16686/trace/{trace_id}').",
    )


class HttpSettings(BaseModel):
    """The HTTP API (``coordinator.api.app``): start, inspect, retry and abort sagas.

    Mutating endpoints need ``Authorization: Bearer <token>``; with no token configured they
    are refused (403), never open. Reads need the token too while ``token_for_reads`` is on
    (by default: whenever a token is configured). ``/health``, ``/ready`` and the schema are
    open. The limits bound what one client can make the coordinator hold.
    """

    # Loopback unless told otherwise: a container or pod sets SAGA_HTTP__HOST=0.0.0.0.
    host: str = "127.0.0.1"
    port: int | None = Field(
        default=8080,
        ge=0,
        le=65_535,
        description="None (env: empty, 'none' or 'off') disables the API; 0 picks a free port.",
    )
    token: SecretStr | None = None
    token_for_reads: bool | None = Field(
        default=None,
        description="Whether reads (GET /sagas...) need the token too; None: when a token is "
        "configured. True without a token refuses reads (403).",
    )
    max_body_bytes: int = Field(
        default=1_048_576,
        ge=1_024,
        le=64 * 1_048_576,
        description="The largest request body accepted (413 beyond), checked before parsing.",
    )
    max_header_bytes: int = Field(
        default=16_384,
        ge=1_024,
        le=1_048_576,
        description="The largest request line plus headers (uvicorn's "
        "h11_max_incomplete_event_size); the connection is refused beyond.",
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="A connection whose request headers are not complete this long after it "
        "opened (or after its previous response) is closed.",
    )
    body_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description="The longest wait for the next chunk of a request body (408 beyond).",
    )
    keep_alive_timeout_s: int = Field(
        default=5, ge=1, le=300, description="Idle keep-alive connections are closed after this."
    )
    max_concurrency: int = Field(
        default=256,
        ge=1,
        le=100_000,
        description="Connections plus requests in progress beyond which new requests are "
        "answered 503 (uvicorn's limit_concurrency).",
    )
    console: ConsoleSettings = Field(default_factory=ConsoleSettings)

    @field_validator("port", mode="before")
    @classmethod
    def _port_off(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in ("", "none", "off"):
            return None
        return value

    @property
    def reads_need_token(self) -> bool:
        """Whether the read endpoints check the bearer token."""
        if self.token_for_reads is not None:
            return self.token_for_reads
        return self.token is not None and bool(self.token.get_secret_value())


class MetricsSettings(BaseModel):
    """The Prometheus endpoint and the gauges sampled from the database."""

    port: int | None = Field(
        default=9464,
        ge=0,
        le=65_535,
        description="Port of /metrics; None (env: empty, 'none' or 'off') turns it off.",
    )
    # Loopback unless told otherwise: where Prometheus scrapes from outside the pod or
    # container, the deployment sets SAGA_METRICS__HOST=0.0.0.0.
    host: str = "127.0.0.1"
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


class ScheduleConfig(BaseModel):
    """A schedule declared in the configuration (one on a definition needs none of this).

    Its saga's start data is ``data``, plus the tick's time (ISO 8601, UTC) under
    ``tick_field`` when one is named.
    """

    name: str
    saga_type: str
    cron: str = Field(description="UTC; five fields, or six with seconds first.")
    data: dict[str, Any] = Field(default_factory=dict)
    tick_field: str | None = None
    catch_up: CatchUp = CatchUp.SKIP

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        try:
            return Cron(value).expression
        except ScheduleError as exc:
            raise ValueError(str(exc)) from exc

    def scheduled(self) -> ScheduledSaga:
        """The schedule as the scheduler runs it."""
        data, field_name = dict(self.data), self.tick_field

        def build(tick: datetime) -> dict[str, Any]:
            return {**data, field_name: tick.isoformat()} if field_name else dict(data)

        return ScheduledSaga(
            name=self.name,
            saga_type=self.saga_type,
            cron=Cron(self.cron),
            build_data=build,
            catch_up=self.catch_up,
            source="configuration",
        )


class ScheduleSettings(BaseModel):
    """Sagas started on a schedule (``coordinator.core.schedule``; all times UTC).

    Every coordinator runs the scheduler; a tick fires once however many do.
    """

    enabled: bool = True
    interval_s: float = Field(
        default=1.0, gt=0, le=60, description="How often due ticks are looked for."
    )
    misfire_grace_s: float = Field(
        default=30.0,
        ge=0,
        description="A tick at most this old is on time and fires under every catch-up "
        "policy; an older one was missed (an outage) and its policy decides.",
    )
    max_catch_up: int = Field(
        default=100,
        ge=1,
        le=10_000,
        description="At most this many ticks of one schedule fire per round (the newest); "
        "catch_up=all skips the older ones beyond.",
    )
    tick_retention_s: float = Field(
        default=7 * 86_400.0, gt=0, description="Fired ticks are remembered this long."
    )
    declared: list[ScheduleConfig] = Field(
        default_factory=list,
        description="Schedules of the configuration, as JSON in SAGA_SCHEDULES__DECLARED, "
        'e.g. \'[{"name": "hourly-audit", "saga_type": "audit", "cron": '
        '"0 * * * *", "tick_field": "at"}]\'.',
    )


class Settings(BaseSettings):
    """All of the coordinator's settings."""

    model_config = SettingsConfigDict(env_prefix="SAGA_", env_nested_delimiter="__", extra="ignore")

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    relay: RelaySettings = Field(default_factory=RelaySettings)
    events: EventSettings = Field(default_factory=EventSettings)
    deadlines: DeadlineSettings = Field(default_factory=DeadlineSettings)
    admission: AdmissionSettings = Field(default_factory=AdmissionSettings)
    housekeeping: HousekeepingSettings = Field(default_factory=HousekeepingSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    schedules: ScheduleSettings = Field(default_factory=ScheduleSettings)
    shutdown_grace_s: float = Field(default=10.0, gt=0)
    registry: str = Field(
        default="saga_defs:default_registry",
        description="The saga definitions to run, as 'package.module:attribute' naming a "
        "SagaRegistry or a function returning one [env SAGA_REGISTRY].",
    )
    start_versions: dict[str, int] = Field(
        default_factory=dict,
        description="Pins the definition version new sagas of a type start with, e.g. "
        "'{\"order\": 1}' (default: the newest registered) [env SAGA_START_VERSIONS].",
    )
