"""Signals over real Kafka + PostgreSQL: a wait for ``approval`` takes a signal sent before,
during or after it (kept, applied, dead-lettered), times out (compensate, or take the default
branch), and signals arrive from Kafka (the SDK), the HTTP API and the CLI.

The test plays the ``ledger`` participant, answering each command when it chooses.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer
from pydantic import SecretStr
from typer.testing import CliRunner, Result

from coordinator.app import Coordinator
from coordinator.cli.main import app
from coordinator.config import Settings
from coordinator.core.definition import SagaRegistry
from coordinator.core.state import SagaInstance, SagaStatus
from coordinator.store.parking import ParkingStore
from service_sdk import (
    DeadLetterHeader,
    Envelope,
    Outcome,
    Topics,
    decode_headers,
    decode_signal,
    send_signal,
)
from tests.support.replies import participant_reply
from tests.support.shaped_sagas import Booking, approval_saga
from tests.support.waiting import eventually

TOKEN = "signals-token"
ORDER = Booking(order_id="o-1")


class Ledger:
    """The test as the ``ledger`` participant: reads its commands, answers when told."""

    def __init__(self, reader: Any, send: Callable[..., Any], topics: Topics) -> None:
        self._reader = reader
        self._send = send
        self._topics = topics
        self._pending: list[Envelope] = []

    async def next(self) -> Envelope:
        """The next command sent to the ledger."""
        if not self._pending:
            self._pending.extend(await self._reader.envelopes(1))
        return self._pending.pop(0)

    async def answer(
        self, step: str, outcome: Outcome = Outcome.SUCCESS, error: str | None = None
    ) -> Envelope:
        """Answer the next command, which must be ``step``'s."""
        command = await self.next()
        assert command.step == step, f"expected {step}, got {command.step} ({command.message_type})"
        await self._send(self._topics.replies, participant_reply(command, outcome, error=error))
        return command


async def _saga(coordinator: Coordinator, saga_id: str) -> SagaInstance:
    async with coordinator.store.engine.connect() as conn:
        saga = await coordinator.store.select_saga(conn, saga_id)
    assert saga is not None
    return saga


async def _kinds(coordinator: Coordinator, saga_id: str) -> list[str]:
    async with coordinator.store.engine.connect() as conn:
        return [r.kind for r in await coordinator.store.select_history(conn, saga_id)]


async def _until(coordinator: Coordinator, saga_id: str, kind: str) -> None:
    async def recorded() -> bool:
        kinds = await _kinds(coordinator, saga_id)
        assert kind in kinds, kinds
        return True

    await eventually(recorded, what=f"{kind} in the history of {saga_id}")


async def _status(coordinator: Coordinator, saga_id: str, status: SagaStatus) -> SagaInstance:
    async def reached() -> SagaInstance:
        saga = await _saga(coordinator, saga_id)
        assert saga.status is status, (saga.status, saga.current_step, saga.failure_reason)
        return saga

    return await eventually(reached, what=f"{saga_id} {status.value}")


async def _cli(settings: Settings, *args: str) -> Result:
    env = {
        "COLUMNS": "200",
        "SAGA_DATABASE__URL": settings.database.url,
        "SAGA_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "SAGA_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
        "SAGA_KAFKA__IDEMPOTENT": "true" if settings.kafka.idempotent else "false",
    }
    return await asyncio.to_thread(CliRunner().invoke, app, list(args), env=env)


def _registry(**options: Any) -> SagaRegistry:
    return SagaRegistry([approval_saga(**options)])


async def test_a_signal_before_its_wait_is_kept_and_taken_when_the_wait_begins(
    coordinator_settings: Settings,
    running_coordinator: Any,
    topic_reader: Any,
    send_envelope: Any,
    producer: AIOKafkaProducer,
) -> None:
    topics = Topics(coordinator_settings.kafka.topic_prefix)
    async with (
        running_coordinator(coordinator_settings, _registry()) as coordinator,
        topic_reader(topics.commands("ledger")) as reader,
    ):
        ledger = Ledger(reader, send_envelope, topics)
        saga_id = await coordinator.client.start("approval_flow", ORDER, saga_id="early")
        reserve = await ledger.next()  # not answered yet
        assert reserve.step == "reserve"
        # Over Kafka, with the SDK: the saga still reserves, its wait lies ahead.
        signal_id = await send_signal(
            producer, saga_id, "approval", {"approved_by": "ann"}, topics=topics, source="hr"
        )
        await _until(coordinator, saga_id, "signal_kept")
        kept = await _saga(coordinator, saga_id)
        assert [(p.message_id, p.name) for p in kept.pending_signals] == [(signal_id, "approval")]
        assert kept.current_step == "reserve"
        await send_envelope(topics.replies, participant_reply(reserve))
        # The wait begins and takes the kept signal at once: the next command is confirm.
        await ledger.answer("confirm")
        done = await _status(coordinator, saga_id, SagaStatus.COMPLETED)
    assert done.data["approved_by"] == "ann"
    assert done.pending_signals == ()
    kinds = await _kinds(coordinator, saga_id)
    assert kinds.index("signal_kept") < kinds.index("signal_received")


async def test_a_signal_during_the_wait_over_http_moves_the_saga_on_and_a_bad_one_is_refused(
    coordinator_settings: Settings,
    running_coordinator: Any,
    topic_reader: Any,
    send_envelope: Any,
) -> None:
    topics = Topics(coordinator_settings.kafka.topic_prefix)
    coordinator_settings.http.token = SecretStr(TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        running_coordinator(coordinator_settings, _registry()) as coordinator,
        topic_reader(topics.commands("ledger")) as reader,
        topic_reader(Topics.dead_letters(topics.signals)) as dead,
    ):
        assert coordinator.http is not None
        ledger = Ledger(reader, send_envelope, topics)
        saga_id = await coordinator.client.start("approval_flow", ORDER, saga_id="during")
        await ledger.answer("reserve")
        await _until(coordinator, saga_id, "signal_awaited")
        base = f"http://127.0.0.1:{coordinator.http.port}"
        async with httpx.AsyncClient(base_url=base, headers=auth) as http:
            unknown = await http.post("/sagas/nobody/signals/approval", json={})
            assert unknown.status_code == 404
            # A payload the wait's model refuses: dead-lettered, the saga still waits.
            bad = await http.post(f"/sagas/{saga_id}/signals/approval", json={"by": "x"})
            assert bad.status_code == 202, bad.text
            (letter,) = await dead.records(1)
            headers = decode_headers(letter.headers)
            assert headers[DeadLetterHeader.REASON] == "signal_invalid"
            assert decode_signal(letter.value).message_id == bad.json()["signal_id"]
            assert (await _saga(coordinator, saga_id)).current_step == "approve"

            good = await http.post(
                f"/sagas/{saga_id}/signals/approval",
                json={"approved_by": "bob"},
                headers={"Idempotency-Key": "approval-1"},
            )
            assert good.status_code == 202, good.text
            assert good.json()["signal_id"] == "approval-1"
        await ledger.answer("confirm")
        done = await _status(coordinator, saga_id, SagaStatus.COMPLETED)
    assert done.data["approved_by"] == "bob"
    kinds = await _kinds(coordinator, saga_id)
    assert kinds.count("signal_rejected") == 1
    assert kinds.count("signal_received") == 1


async def test_a_signal_after_the_wait_or_for_an_ended_or_unknown_saga_is_dead_lettered(
    coordinator_settings: Settings,
    running_coordinator: Any,
    topic_reader: Any,
    send_envelope: Any,
    producer: AIOKafkaProducer,
) -> None:
    topics = Topics(coordinator_settings.kafka.topic_prefix)
    async with (
        running_coordinator(coordinator_settings, _registry()) as coordinator,
        topic_reader(topics.commands("ledger")) as reader,
        topic_reader(Topics.dead_letters(topics.signals)) as dead,
    ):
        ledger = Ledger(reader, send_envelope, topics)
        saga_id = await coordinator.client.start("approval_flow", ORDER, saga_id="after")
        await ledger.answer("reserve")
        await _until(coordinator, saga_id, "signal_awaited")
        # From the CLI: the wait takes it.
        sent = await _cli(
            coordinator_settings, "signal", saga_id, "approval", "--data", '{"approved_by": "cy"}'
        )
        assert sent.exit_code == 0, sent.output
        assert "sent to" in sent.output
        confirm = await ledger.next()
        assert confirm.step == "confirm"

        async def reasons(count: int) -> list[tuple[str, str]]:
            found = await dead.records(count)
            return [
                (
                    decode_headers(r.headers)[DeadLetterHeader.REASON],
                    decode_signal(r.value).message_id,
                )
                for r in found
            ]

        # The wait is behind the saga now (it awaits confirm).
        late = await send_signal(producer, saga_id, "approval", {"approved_by": "x"}, topics=topics)
        assert await reasons(1) == [("signal_not_awaited", late)]
        await send_envelope(topics.replies, participant_reply(confirm))
        await _status(coordinator, saga_id, SagaStatus.COMPLETED)
        ended = await send_signal(
            producer, saga_id, "approval", {"approved_by": "x"}, topics=topics
        )
        stranger = await send_signal(producer, "no-such-saga", "approval", {}, topics=topics)
        assert sorted(await reasons(2)) == sorted(
            [("saga_terminal", ended), ("unknown_saga", stranger)]
        )
        # The CLI says so, and refuses an unknown saga outright.
        again = await _cli(coordinator_settings, "signal", saga_id, "approval")
        assert again.exit_code == 0
        assert "dead-lettered (saga_terminal)" in again.output
        nobody = await _cli(coordinator_settings, "signal", "no-such-saga", "approval")
        assert nobody.exit_code == 1
        assert "no saga with id 'no-such-saga'" in nobody.output
        bad = await _cli(coordinator_settings, "signal", saga_id, "approval", "--data", "[1]")
        assert bad.exit_code == 2
    kinds = await _kinds(coordinator, saga_id)
    assert kinds.count("signal_rejected") == 3  # after the wait, ended, ended (CLI)
    assert (await _saga(coordinator, saga_id)).data["approved_by"] == "cy"


async def test_an_approval_timeout_fails_the_step_and_compensates(
    coordinator_settings: Settings,
    running_coordinator: Any,
    topic_reader: Any,
    send_envelope: Any,
) -> None:
    topics = Topics(coordinator_settings.kafka.topic_prefix)
    registry = _registry(timeout=timedelta(seconds=1))
    async with (
        running_coordinator(coordinator_settings, registry) as coordinator,
        topic_reader(topics.commands("ledger")) as reader,
    ):
        ledger = Ledger(reader, send_envelope, topics)
        saga_id = await coordinator.client.start("approval_flow", ORDER, saga_id="too-late")
        await ledger.answer("reserve")
        release = await ledger.answer("reserve")  # the compensation names the forward step
        assert release.message_type == "ledger.release"
        done = await _status(coordinator, saga_id, SagaStatus.COMPENSATED)
    assert done.compensated_steps == ("reserve",)
    assert "approve" in (done.failure_reason or "")


async def test_an_approval_timeout_with_continue_takes_the_default_branch(
    coordinator_settings: Settings,
    running_coordinator: Any,
    topic_reader: Any,
    send_envelope: Any,
) -> None:
    topics = Topics(coordinator_settings.kafka.topic_prefix)
    registry = _registry(timeout=timedelta(seconds=1), on_timeout="continue")
    async with (
        running_coordinator(coordinator_settings, registry) as coordinator,
        topic_reader(topics.commands("ledger")) as reader,
    ):
        ledger = Ledger(reader, send_envelope, topics)
        saga_id = await coordinator.client.start("approval_flow", ORDER, saga_id="default")
        await ledger.answer("reserve")
        await ledger.answer("confirm")
        done = await _status(coordinator, saga_id, SagaStatus.COMPLETED)
    assert done.data["approved_by"] is None
    assert "timed_out_default" in await _kinds(coordinator, saga_id)


async def test_a_signal_for_a_saga_of_a_version_not_loaded_is_parked_then_applied_or_refused(
    coordinator_settings: Settings,
    running_coordinator: Any,
    topic_reader: Any,
    send_envelope: Any,
    producer: AIOKafkaProducer,
) -> None:
    topics = Topics(coordinator_settings.kafka.topic_prefix)
    v1 = _registry()
    async with topic_reader(topics.commands("ledger")) as reader:
        ledger = Ledger(reader, send_envelope, topics)
        async with running_coordinator(coordinator_settings, v1) as coordinator:
            saga_id = await coordinator.client.start("approval_flow", ORDER, saga_id="parked")
            await ledger.answer("reserve")
            await _until(coordinator, saga_id, "signal_awaited")
        # A coordinator with version 2 only (a rolling deploy): it parks both signals.
        async with running_coordinator(coordinator_settings, _registry(version=2)) as v2_only:
            await send_signal(producer, saga_id, "approval", {"approved_by": "dee"}, topics=topics)
            nudge = await send_signal(producer, saga_id, "nudge", {}, topics=topics)

            async def parked() -> bool:
                async with v2_only.store.engine.connect() as conn:
                    found = await ParkingStore().select_parked_sagas(conn, limit=10)
                got = [(p.saga_id, p.definition_version, p.replies) for p in found]
                assert got == [(saga_id, 1, 2)], got
                return True

            await eventually(parked, what="both signals parked")
            assert (await _saga(v2_only, saga_id)).current_step == "approve"
        # Version 1 is back: the approval is applied, the nudge dead-lettered with its reason.
        async with (
            running_coordinator(coordinator_settings, v1) as coordinator,
            topic_reader(Topics.dead_letters(topics.signals)) as dead,
        ):
            await ledger.answer("confirm")
            done = await _status(coordinator, saga_id, SagaStatus.COMPLETED)
            (letter,) = await dead.records(1)
            async with coordinator.store.engine.connect() as conn:
                assert await ParkingStore().count_parked_sagas(conn) == {}
    assert done.data["approved_by"] == "dee"
    headers = decode_headers(letter.headers)
    assert headers[DeadLetterHeader.REASON] == "signal_not_awaited"
    assert headers[DeadLetterHeader.ORIGINAL_TOPIC] == topics.signals
    assert decode_signal(letter.value).message_id == nudge
