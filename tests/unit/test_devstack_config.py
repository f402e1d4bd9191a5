"""Pure parts of the dev stack: rendered configuration, precedence, URLs. No I/O."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from coordinator.devstack import (
    ApacheKafka,
    DevStackConfigError,
    EmbeddedKafka,
    ExternalKafka,
    choose_kafka,
    choose_postgres,
    database_url,
    default_kafka_cache_dir,
    kafka_client_settings,
    kafka_consumer_settings,
    postgres_server_args,
    render_server_properties,
    sqlalchemy_url,
)
from coordinator.devstack.apache_kafka import new_cluster_id, render_kafka_pom
from coordinator.devstack.postgres_admin import asyncpg_dsn


def _no_docker() -> bool:
    return False


def _docker() -> bool:
    return True


def _docker_must_not_be_probed() -> bool:
    raise AssertionError("docker probed although the choice was already made")


def _properties(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines())


class TestServerProperties:
    def test_single_kraft_node_on_the_given_ports(self) -> None:
        props = _properties(
            render_server_properties(port=9092, controller_port=9093, data_dir=Path("/tmp/d"))
        )
        assert props["process.roles"] == "broker,controller"
        assert props["controller.quorum.voters"] == "1@127.0.0.1:9093"
        assert props["listeners"] == "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"
        assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:9092"
        assert props["log.dirs"] == "/tmp/d"
        assert props["num.partitions"] == "4"
        assert props["share.coordinator.state.topic.replication.factor"] == "1"
        assert props["transaction.state.log.min.isr"] == "1"

    def test_extra_properties_override(self) -> None:
        text = render_server_properties(
            port=1,
            controller_port=2,
            data_dir=Path("/d"),
            num_partitions=8,
            extra={"num.partitions": "12", "log.retention.ms": "1000"},
        )
        props = _properties(text)
        assert props["num.partitions"] == "12"
        assert props["log.retention.ms"] == "1000"
        assert text.count("num.partitions=") == 1

    def test_pom_lists_broker_and_log4j_binding(self) -> None:
        pom = render_kafka_pom("4.1.1", "2.24.3")
        assert "<artifactId>kafka_2.13</artifactId><version>4.1.1</version>" in pom
        assert "<artifactId>log4j-slf4j-impl</artifactId><version>2.24.3</version>" in pom
        assert "<packaging>pom</packaging>" in pom

    def test_cluster_id_is_a_kafka_uuid(self) -> None:
        for _ in range(200):
            cluster_id = new_cluster_id()
            assert len(cluster_id) == 22
            assert not cluster_id.startswith("-")
            assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


class TestKafkaCacheDir:
    def test_env_override_wins(self) -> None:
        assert default_kafka_cache_dir({"SAGA_KAFKA_CACHE": "/opt/k"}) == Path("/opt/k")

    def test_default_is_outside_the_repo_under_the_user_cache(self) -> None:
        path = default_kafka_cache_dir({}, "4.1.1")
        assert path == Path.home() / ".cache" / "saga-coordinator" / "kafka-4.1.1"


class TestChooseKafka:
    def test_default_without_docker_is_local_apache(self) -> None:
        choice = choose_kafka({}, docker_available=_no_docker)
        assert (choice.kind, choice.forced) == ("apache", False)

    def test_external_bootstrap_comes_first(self) -> None:
        choice = choose_kafka(
            {"SAGA_TEST_KAFKA_BOOTSTRAP": "k:9092"}, docker_available=_docker_must_not_be_probed
        )
        assert (choice.kind, choice.bootstrap_servers) == ("external", "k:9092")

    def test_docker_comes_before_local(self) -> None:
        assert choose_kafka({}, docker_available=_docker).kind == "container"

    @pytest.mark.parametrize("kind", ["apache", "embedded", "APACHE "])
    def test_forced_local_kind_wins_over_everything(self, kind: str) -> None:
        env = {"SAGA_TEST_KAFKA": kind, "SAGA_TEST_KAFKA_BOOTSTRAP": "k:9092"}
        choice = choose_kafka(env, docker_available=_docker_must_not_be_probed)
        assert (choice.kind, choice.forced) == (kind.strip().lower(), True)

    def test_forced_external_needs_an_address(self) -> None:
        with pytest.raises(DevStackConfigError, match="SAGA_TEST_KAFKA_BOOTSTRAP"):
            choose_kafka({"SAGA_TEST_KAFKA": "external"}, docker_available=_no_docker)

    def test_forced_container_without_docker_fails_loudly(self) -> None:
        with pytest.raises(DevStackConfigError, match="no Docker engine"):
            choose_kafka({"SAGA_TEST_KAFKA": "container"}, docker_available=_no_docker)

    def test_unknown_kind_is_rejected(self) -> None:
        with pytest.raises(DevStackConfigError, match="redpanda"):
            choose_kafka({"SAGA_TEST_KAFKA": "redpanda"}, docker_available=_no_docker)


class TestChoosePostgres:
    def test_default_prefers_the_embedded_wheel(self) -> None:
        choice = choose_postgres(
            {}, docker_available=_no_docker, embedded_available=True, debian_available=True
        )
        assert choice.kind == "embedded"

    def test_falls_back_to_debian(self) -> None:
        choice = choose_postgres(
            {}, docker_available=_no_docker, embedded_available=False, debian_available=True
        )
        assert choice.kind == "debian"

    def test_nothing_available_is_an_error(self) -> None:
        with pytest.raises(DevStackConfigError, match="no PostgreSQL"):
            choose_postgres(
                {}, docker_available=_no_docker, embedded_available=False, debian_available=False
            )

    def test_external_url_then_docker(self) -> None:
        env = {"SAGA_TEST_DATABASE_URL": "postgresql://u@h/db"}
        external = choose_postgres(
            env,
            docker_available=_docker_must_not_be_probed,
            embedded_available=True,
            debian_available=True,
        )
        assert (external.kind, external.url) == ("external", "postgresql://u@h/db")
        container = choose_postgres(
            {}, docker_available=_docker, embedded_available=True, debian_available=True
        )
        assert container.kind == "container"

    def test_forced_debian_is_honoured_even_if_missing(self) -> None:
        # It then fails when it starts, naming what to install; it never falls back.
        choice = choose_postgres(
            {"SAGA_TEST_POSTGRES": "debian"},
            docker_available=_docker_must_not_be_probed,
            embedded_available=True,
            debian_available=False,
        )
        assert (choice.kind, choice.forced) == ("debian", True)

    def test_forced_external_needs_a_url(self) -> None:
        with pytest.raises(DevStackConfigError, match="SAGA_TEST_DATABASE_URL"):
            choose_postgres(
                {"SAGA_TEST_POSTGRES": "external"},
                docker_available=_no_docker,
                embedded_available=True,
                debian_available=True,
            )


class TestClientSettings:
    def test_apache_kafka_gets_idempotence(self) -> None:
        broker = ExternalKafka("k:9092")
        assert kafka_client_settings(broker) == {
            "bootstrap_servers": "k:9092",
            "acks": "all",
            "enable_idempotence": True,
        }
        assert kafka_consumer_settings(broker) == {"bootstrap_servers": "k:9092"}

    def test_embedded_broker_gets_acks_all_without_idempotence(self) -> None:
        broker = EmbeddedKafka()
        broker._address = "127.0.0.1:1"  # pretend it started; no process here
        settings = kafka_client_settings(broker)
        assert settings["enable_idempotence"] is False
        assert settings["acks"] == "all"
        assert kafka_consumer_settings(broker)["session_timeout_ms"] < 6000

    def test_launchers_declare_their_kind_without_starting(self) -> None:
        assert (ApacheKafka().kind, ApacheKafka().supports_idempotence) == ("apache", True)
        assert (EmbeddedKafka().kind, EmbeddedKafka().supports_idempotence) == ("embedded", False)
        with pytest.raises(RuntimeError, match="not started"):
            _ = ApacheKafka().bootstrap_servers


class TestPostgresConfig:
    def test_server_args_listen_on_loopback_only(self) -> None:
        args = postgres_server_args(port=5555, fsync=True)
        pairs = dict(a.split("=", 1) for a in args[1::2])
        assert args[0::2] == ["-c"] * len(pairs)
        assert pairs["listen_addresses"] == "127.0.0.1"
        assert pairs["port"] == "5555"
        assert pairs["unix_socket_directories"] == ""
        assert "fsync" not in pairs

    def test_fsync_off_is_explicit_and_overridable(self) -> None:
        args = postgres_server_args(port=1, fsync=False, settings={"synchronous_commit": "on"})
        pairs = dict(a.split("=", 1) for a in args[1::2])
        assert pairs["fsync"] == "off"
        assert pairs["synchronous_commit"] == "on"

    def test_urls(self) -> None:
        server = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
        assert database_url(server, "test_ab12") == (
            "postgresql+asyncpg://postgres@127.0.0.1:5432/test_ab12"
        )
        assert sqlalchemy_url("postgres://u:p@h:1/d") == "postgresql+asyncpg://u:p@h:1/d"
        assert asyncpg_dsn(server) == "postgresql://postgres@127.0.0.1:5432/postgres"
