"""A definition changed while sagas are in flight: every saga finishes on the version it
started with, old and new coordinators side by side, and a coordinator that lacks a saga's
version parks its replies until one that has it takes them (real Kafka + PostgreSQL)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import pytest
import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.config import Settings
from coordinator.core.definition import SagaDefinition, SagaRegistry, Step
from coordinator.core.errors import UnknownSagaVersionError
from coordinator.store.parking import ParkingStore
from saga_defs import OrderData, OrderSaga, OrderSagaV2, versioned_registry
from saga_defs.order import OrderItem
from service_sdk.contract import Command
from tests.support.plain_participant import Answer, PlainParticipant
from tests.support.waiting import eventually

V1_STEPS = ["reserve_inventory", "charge_payment", "schedule_shipping"]
V2_STEPS = ["reserve_inventory", "screen_order", "charge_payment", "schedule_shipping"]

HANDLERS = {
    "inventory": lambda t, p: Answer(payload={"reservation_id": f"r-{p['order_id']}"}),
    "fraud": lambda t, p: Answer(payload={"screening_id": f"f-{p['order_id']}"}),
    "payment": lambda t, p: Answer(payload={"charge_id": f"c-{p['order_id']}"}),
    "shipping": lambda t, p: Answer(payload={"shipment_id": f"s-{p['order_id']}"}),
}


def _order(n: str) -> OrderData:
    return OrderData(
        order_id=n, customer_id="c", items=(OrderItem(sku="k", quantity=1),), amount_cents=100
    )


def _participant(
    kafka: Any, settings: Settings, services: Sequence[str], producer: dict[str, Any]
) -> PlainParticipant:
    return PlainParticipant(
        kafka.bootstrap_servers,
        settings.kafka.topic_prefix,
        {s: HANDLERS[s] for s in services},
        producer_settings=producer,
    )


async def _sagas(engine: AsyncEngine, ids: Sequence[str]) -> dict[str, Any]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.text(
                "SELECT saga_id, status, current_step, definition_version, completed_steps "
                "FROM saga.saga_instance WHERE saga_id = ANY(:ids)"
            ),
            {"ids": list(ids)},
        )
        return {r.saga_id: r for r in rows}


async def _all_at(engine: AsyncEngine, ids: Sequence[str], step: str) -> bool:
    sagas = await _sagas(engine, ids)
    waiting = sum(1 for s in sagas.values() if s.current_step == step)
    assert waiting == len(ids), f"{waiting} of {len(ids)} sagas await {step}"
    return True


async def _all_completed(engine: AsyncEngine, ids: Sequence[str]) -> dict[str, Any]:
    sagas = await _sagas(engine, ids)
    done = sum(1 for s in sagas.values() if s.status == "COMPLETED")
    assert done == len(ids), f"{done} of {len(ids)} sagas COMPLETED"
    return sagas


async def test_version_2_deployed_while_200_version_1_sagas_are_in_flight(
    kafka: Any,
    coordinator_settings: Settings,
    running_coordinator: Any,
    kafka_producer_settings: dict[str, Any],
    fresh_topics: Any,
) -> None:
    settings = coordinator_settings
    # The participants subscribe before any coordinator has created their topics.
    await fresh_topics(*(f"{service}.commands" for service in HANDLERS))
    old, new = SagaRegistry([OrderSaga]), versioned_registry()
    early = _participant(
        kafka, settings, ["inventory", "fraud", "shipping"], kafka_producer_settings
    )
    async with early, running_coordinator(settings, old) as old_coordinator:
        engine = old_coordinator.store.engine
        v1_ids = [f"v1-{i}" for i in range(200)]
        for saga_id in v1_ids:
            await old_coordinator.client.start("order", _order(saga_id), saga_id=saga_id)
        # In flight: reserved, awaiting a charge (the payment participant is not running yet).
        await eventually(lambda: _all_at(engine, v1_ids, "charge_payment"), timeout=90)

        # The deploy: a coordinator with versions 1 and 2 joins the old one (same group).
        async with running_coordinator(settings, new) as new_coordinator:
            v2_ids = [f"v2-{i}" for i in range(40)]
            for saga_id in v2_ids:
                await new_coordinator.client.start("order", _order(saga_id), saga_id=saga_id)
            payment = _participant(kafka, settings, ["payment"], kafka_producer_settings)
            async with payment:
                v1 = await eventually(lambda: _all_completed(engine, v1_ids), timeout=120)
                v2 = await eventually(lambda: _all_completed(engine, v2_ids), timeout=120)

    assert {s.definition_version for s in v1.values()} == {1}
    assert {tuple(s.completed_steps) for s in v1.values()} == {tuple(V1_STEPS)}
    assert {s.definition_version for s in v2.values()} == {2}
    assert {tuple(s.completed_steps) for s in v2.values()} == {tuple(V2_STEPS)}
    screened = {e.saga_id for e in early.executed("fraud.screen_order")}
    assert screened == set(v2_ids), "a version 1 saga went through a version 2 step"
    # Every command ran once: nothing leaked, nothing doubled.
    for participant in (early, payment):
        ran = [(e.saga_id, e.message_type) for e in participant.log]
        assert len(ran) == len(set(ran))
    assert len(payment.log) == len(v1_ids) + len(v2_ids)


async def test_a_coordinator_lacking_a_version_parks_its_sagas_and_a_later_one_finishes_them(
    kafka: Any,
    coordinator_settings: Settings,
    running_coordinator: Any,
    kafka_producer_settings: dict[str, Any],
    fresh_topics: Any,
) -> None:
    settings = coordinator_settings
    # The participants subscribe before any coordinator has created their topics.
    await fresh_topics(*(f"{service}.commands" for service in HANDLERS))
    early = _participant(kafka, settings, ["inventory", "shipping"], kafka_producer_settings)
    ids = [f"p-{i}" for i in range(30)]
    async with early:
        async with running_coordinator(settings, SagaRegistry([OrderSaga])) as old:
            for saga_id in ids:
                await old.client.start("order", _order(saga_id), saga_id=saga_id)
            await eventually(lambda: _all_at(old.store.engine, ids, "charge_payment"), timeout=90)

        # Only version 2 is deployed: the payment replies of the version 1 sagas are parked.
        lacking = SagaRegistry([OrderSagaV2])
        payment = _participant(kafka, settings, ["payment"], kafka_producer_settings)
        async with running_coordinator(settings, lacking) as v2_only, payment:
            engine = v2_only.store.engine

            async def all_parked() -> bool:
                async with engine.connect() as conn:
                    counts = await ParkingStore().count_parked_sagas(conn)
                assert counts == {("order", 1): len(ids)}
                return True

            await eventually(all_parked, timeout=60)
            assert v2_only.metrics.parked_replies._value.get() >= len(ids)
            await v2_only.sampler.sample_once()
            gauge = v2_only.metrics.parked_sagas.labels("order", "1")._value.get()
            assert gauge == len(ids)
            sagas = await _sagas(engine, ids)
            # Untouched: still awaiting the charge whose reply is parked.
            assert {(s.status, s.current_step) for s in sagas.values()} == {
                ("RUNNING", "charge_payment")
            }
            assert len(payment.log) == len(ids)

        # A coordinator that has version 1 takes the parked replies: the sagas finish on v1.
        async with running_coordinator(settings, versioned_registry()) as later:
            engine = later.store.engine
            done = await eventually(lambda: _all_completed(engine, ids), timeout=90)
            async with engine.connect() as conn:
                assert await ParkingStore().count_parked_sagas(conn) == {}
    assert {tuple(s.completed_steps) for s in done.values()} == {tuple(V1_STEPS)}
    # The parked replies were applied, not re-requested: each charge ran once.
    assert len(payment.log) == len(ids)


async def test_an_operator_migrates_a_saga_to_version_2_and_it_finishes_there(
    kafka: Any,
    coordinator_settings: Settings,
    running_coordinator: Any,
    kafka_producer_settings: dict[str, Any],
    fresh_topics: Any,
) -> None:
    settings = coordinator_settings
    await fresh_topics(*(f"{service}.commands" for service in HANDLERS))
    async with running_coordinator(settings, SagaRegistry([OrderSaga])) as old:
        await old.client.start("order", _order("m-1"), saga_id="m-1")
        # Lacking version 2 here, the operator cannot move it; on v1 it can still be acted on.
        with pytest.raises(UnknownSagaVersionError):
            await old.operator.migrate("m-1", 2, actor="ann", reason="v2 rollout")
    async with running_coordinator(settings, versioned_registry()) as new:
        engine = new.store.engine
        rehearsed = await new.operator.migrate(
            "m-1", 2, actor="ann", reason="v2 rollout", dry_run=True
        )
        assert (rehearsed.from_version, rehearsed.to_version) == (1, 2)
        assert rehearsed.data_after["screening_id"] is None
        assert {s.definition_version for s in (await _sagas(engine, ["m-1"])).values()} == {1}
        await new.operator.migrate("m-1", 2, actor="ann", reason="v2 rollout")
        assert {s.definition_version for s in (await _sagas(engine, ["m-1"])).values()} == {2}
        participant = _participant(kafka, settings, list(HANDLERS), kafka_producer_settings)
        async with participant:
            done = await eventually(lambda: _all_completed(engine, ["m-1"]), timeout=60)
    assert tuple(done["m-1"].completed_steps) == tuple(V2_STEPS)


class _Ping(Command):
    message_type: ClassVar[str] = "pinger.ping"


class _PingData(BaseModel):
    n: int = 0


class _OtherSaga(SagaDefinition[_PingData]):
    """A saga type the order coordinators do not run."""

    name = "other"
    data_model = _PingData
    steps = (
        Step[_PingData](name="ping", service="pinger", command=_Ping, build=lambda d: _Ping()),
    )


async def test_a_reply_of_a_saga_type_not_registered_here_is_parked_not_dead_lettered(
    kafka: Any,
    coordinator_settings: Settings,
    running_coordinator: Any,
    kafka_producer_settings: dict[str, Any],
    fresh_topics: Any,
) -> None:
    settings = coordinator_settings
    await fresh_topics(*(f"{service}.commands" for service in HANDLERS))
    async with running_coordinator(settings) as first:
        await first.client.start("order", _order("t-1"), saga_id="t-1")
    # A coordinator deployed for another saga type only receives the order saga's replies.
    participant = _participant(kafka, settings, list(HANDLERS), kafka_producer_settings)
    async with running_coordinator(settings, SagaRegistry([_OtherSaga])) as other, participant:

        async def parked() -> bool:
            async with other.store.engine.connect() as conn:
                assert await ParkingStore().count_parked_sagas(conn) == {("order", 1): 1}
            return True

        await eventually(parked, timeout=60)
    async with running_coordinator(settings) as later, participant:
        await eventually(lambda: _all_completed(later.store.engine, ["t-1"]), timeout=60)
