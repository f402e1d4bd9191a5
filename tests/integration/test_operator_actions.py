"""Operator actions (retry, abort, dry runs) and the ``saga show|list|retry|abort`` commands,
against real Kafka + PostgreSQL with the coordinator in-process.

Participants are either real ``ServiceRunner``s (so the SDK's record of answered command ids is
what an operator retry has to get past) or the test itself, answering from the command topics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from typer.testing import CliRunner, Result

from coordinator.cli.main import app
from coordinator.config import Settings
from coordinator.core.machine import apply, start_saga
from coordinator.core.state import (
    HistoryKind,
    ReplyReceived,
    SagaInput,
    SagaStatus,
    StartSaga,
    command_id_for,
)
from coordinator.ops.actions import OperatorActions, SagaTimeline
from coordinator.store.database import create_engine
from coordinator.store.migrate import upgrade_database
from coordinator.store.persist import persist
from coordinator.store.saga_store import SagaStore
from saga_defs import OrderData, OrderSaga
from saga_defs.order import (
    ChargePayment,
    OrderItem,
    ReleaseStock,
    ReserveStock,
    StockReserved,
)
from service_sdk import (
    CommandRejected,
    Envelope,
    HandlerContext,
    KafkaConfig,
    Outcome,
    Service,
    ServiceRunner,
    Topics,
)
from tests.support.outbox import outbox_sent
from tests.support.replies import participant_reply
from tests.support.waiting import eventually

if TYPE_CHECKING:
    from coordinator.devstack import KafkaService

WAIT_S = 60.0
"""Generous: the machine is shared with other test runs."""


def order(order_id: str) -> OrderData:
    return OrderData(
        order_id=order_id,
        customer_id="c-1",
        items=(OrderItem(sku="sku-1", quantity=1),),
        amount_cents=990,
    )


# --- participants run by the SDK ---------------------------------------------------------------

INVENTORY = Service("inventory", schema="op_inventory")
PAYMENT = Service("payment", schema="op_payment")
REFUSE_RELEASE: set[str] = set()
"""Order ids whose release the warehouse refuses (for good) while listed."""
RELEASE_RUNS: list[tuple[str, str]] = []
"""``(order id, command id)`` of every run of the release handler."""


@INVENTORY.handles(ReserveStock)
async def reserve_stock(cmd: ReserveStock, ctx: HandlerContext) -> StockReserved:
    return StockReserved(reservation_id=f"r-{cmd.order_id}")


@INVENTORY.handles(ReleaseStock)
async def release_stock(cmd: ReleaseStock, ctx: HandlerContext) -> None:
    RELEASE_RUNS.append((cmd.order_id, ctx.command_id))
    if cmd.order_id in REFUSE_RELEASE:
        raise CommandRejected("warehouse offline")


@PAYMENT.handles(ChargePayment)
async def charge_payment(cmd: ChargePayment, ctx: HandlerContext) -> None:
    raise CommandRejected("card declined")


@contextlib.asynccontextmanager
async def participants(
    kafka: KafkaService, database_url: str, topics: Topics, *services: Service
) -> AsyncIterator[None]:
    engine = create_engine(database_url, pool_size=2)
    config = KafkaConfig(kafka.bootstrap_servers, idempotent=kafka.supports_idempotence)
    runners = [
        ServiceRunner(
            service,
            kafka=config,
            engine=engine,
            topics=topics,
            group_id=f"{topics.prefix}{service.name}-service",
            handler_attempts=1,
        )
        for service in services
    ]
    try:
        for runner in runners:
            await runner.start()
        yield
    finally:
        for runner in runners:
            await runner.stop()
        await engine.dispose()


# --- helpers -----------------------------------------------------------------------------------


async def reaches(ops: OperatorActions, saga_id: str, status: SagaStatus) -> SagaTimeline:
    async def reached() -> SagaTimeline:
        timeline = await ops.show(saga_id)
        assert timeline.instance.status is status, f"{saga_id} is {timeline.instance.status}"
        return timeline

    return await eventually(
        reached, timeout=WAIT_S, interval=0.2, what=f"saga {saga_id} to become {status.value}"
    )


async def read_until(reader: Any, done: Callable[[list[Envelope]], bool]) -> list[Envelope]:
    """Envelopes of a topic (from its start) until ``done(all so far)``."""
    from service_sdk import decode_envelope

    found: list[Envelope] = []

    async def more() -> list[Envelope] | None:
        found.extend(decode_envelope(r.value) for r in await reader.quiet(0.5))
        return found if done(found) else None

    result: list[Envelope] = await eventually(
        more, timeout=WAIT_S, interval=0, what=f"messages on {reader.topic}"
    )
    return result


async def invoke(*args: str) -> Result:
    """Run the ``saga`` CLI in-process; in a thread, because it runs its own event loop."""
    runner = CliRunner()

    def run() -> Result:
        return runner.invoke(app, list(args), env={"COLUMNS": "200", "USER": "tester"})

    return await asyncio.to_thread(run)


def kinds(timeline: SagaTimeline) -> list[str]:
    return [entry.kind for entry in timeline.history]


async def snapshot(store: SagaStore, saga_id: str) -> tuple[Any, ...]:
    """The saga row's version and how many history and outbox rows exist."""
    async with store.engine.connect() as conn:
        version = await conn.scalar(
            text("SELECT version FROM saga.saga_instance WHERE saga_id = :s"), {"s": saga_id}
        )
        history = await conn.scalar(text("SELECT count(*) FROM saga.saga_history"))
        outbox = await conn.scalar(text("SELECT count(*) FROM saga.outbox"))
    return version, history, outbox


# --- a) a compensation refused for good, then retried -------------------------------------------


async def test_a_compensation_refused_for_good_completes_after_an_operator_retry(
    coordinator_settings: Settings,
    running_coordinator: Any,
    topic_reader: Any,
    kafka: KafkaService,
    database_url: str,
) -> None:
    topics = Topics(coordinator_settings.kafka.topic_prefix)
    REFUSE_RELEASE.update({"o-api", "o-cli"})
    RELEASE_RUNS.clear()
    async with (
        running_coordinator(coordinator_settings) as coordinator,
        participants(kafka, database_url, topics, INVENTORY, PAYMENT),
    ):
        ops: OperatorActions = coordinator.operator
        for name in ("api", "cli"):
            await coordinator.client.start("order", order(f"o-{name}"), saga_id=f"saga-{name}")
        failed = {
            name: await reaches(ops, f"saga-{name}", SagaStatus.FAILED) for name in ("api", "cli")
        }
        for timeline in failed.values():
            inst = timeline.instance
            assert (
                inst.failure_reason == "compensation of reserve_inventory failed: warehouse offline"
            )
            assert (inst.current_step, inst.epoch) == ("reserve_inventory", 0)
            assert inst.command_id == command_id_for(
                inst.saga_id, "reserve_inventory", compensation=True
            )
        async with topic_reader(topics.events) as events:
            seen = await read_until(
                events,
                lambda found: (
                    {e.saga_id for e in found if e.message_type == "saga.failed"}
                    == {"saga-api", "saga-cli"}
                ),
            )
        failure = next(e for e in seen if e.message_type == "saga.failed")
        assert failure.payload["status"] == "FAILED"
        assert failure.payload["reason"].endswith("warehouse offline")
        assert failure.step == "reserve_inventory"

        # The warehouse recovers; an operator retries through the Python API ...
        REFUSE_RELEASE.clear()
        result = await ops.retry("saga-api", actor="alice", reason="warehouse back online")
        old_id = failed["api"].instance.command_id
        (command,) = result.commands
        assert (command.topic, command.key, command.message_type, command.step) == (
            topics.commands("inventory"),
            "saga-api",
            "inventory.release_stock",
            "reserve_inventory",
        )
        assert command.command_id == command_id_for(
            "saga-api", "reserve_inventory", compensation=True, epoch=1
        )
        assert command.command_id != old_id
        assert (result.status_before, result.status_after, result.epoch) == (
            SagaStatus.FAILED,
            SagaStatus.COMPENSATING,
            1,
        )
        assert result.outbox_ids
        assert not result.dry_run
        done = await reaches(ops, "saga-api", SagaStatus.COMPENSATED)

        # ... and through the CLI, a separate "process": the coordinator's sweep publishes.
        cli = await invoke(
            "retry",
            "saga-cli",
            "--reason",
            "warehouse back online",
            "--actor",
            "bob",
            "--json",
            "--database-url",
            database_url,
            "--topic-prefix",
            topics.prefix,
        )
        assert cli.exit_code == 0, cli.output
        document = json.loads(cli.stdout)
        assert document["status_after"] == "COMPENSATING"
        assert [c["message_type"] for c in document["commands"]] == ["inventory.release_stock"]
        done_cli = await reaches(ops, "saga-cli", SagaStatus.COMPENSATED)

    assert done.instance.compensated_steps == ("reserve_inventory",)
    (action,) = [e for e in done.history if e.kind == HistoryKind.OPERATOR_ACTION.value]
    assert action.detail == {"actor": "alice", "action": "retry", "reason": "warehouse back online"}
    assert action.step == "reserve_inventory"
    assert kinds(done)[-3:] == ["compensation_sent", "compensation_succeeded", "compensated"]
    (cli_action,) = [e for e in done_cli.history if e.kind == HistoryKind.OPERATOR_ACTION.value]
    assert (cli_action.detail["actor"], cli_action.detail["reason"]) == (
        "bob",
        "warehouse back online",
    )
    # The handler ran again, under the new id: the SDK did not answer from its record. (A
    # refusal in a batch of several commands rolls the batch back and runs it again with a
    # savepoint per handler, so the refused id may have run twice, once rolled back.)
    api_runs = [command_id for order_id, command_id in RELEASE_RUNS if order_id == "o-api"]
    assert list(dict.fromkeys(api_runs)) == [old_id, command.command_id]
    assert api_runs[-1] == command.command_id
    cli_runs = {command_id for order_id, command_id in RELEASE_RUNS if order_id == "o-cli"}
    assert len(cli_runs) == 2


# --- b) abort of a running saga, then a late success --------------------------------------------


async def test_abort_of_a_running_saga_undoes_the_step_in_flight_before_it_ends(
    coordinator_settings: Settings,
    running_coordinator: Any,
    topic_reader: Any,
    send_envelope: Any,
) -> None:
    topics = Topics(coordinator_settings.kafka.topic_prefix)
    async with (
        running_coordinator(coordinator_settings) as coordinator,
        topic_reader(topics.commands("inventory")) as inventory,
        topic_reader(topics.commands("payment")) as payment,
    ):
        ops: OperatorActions = coordinator.operator
        saga_id = await coordinator.client.start("order", order("o-abort"), saga_id="saga-abort")
        (reserve,) = await inventory.envelopes(1, timeout_s=WAIT_S)
        await send_envelope(
            topics.replies, participant_reply(reserve, Outcome.SUCCESS, {"reservation_id": "r"})
        )
        (charge,) = await payment.envelopes(1, timeout_s=WAIT_S)
        assert charge.step == "charge_payment"

        # The charge stays unanswered; the operator aborts: the charge is refunded first (it
        # may still happen), naming the charge the payment service must refuse if it has not
        # run it yet.
        result = await ops.abort(saga_id, actor="carol", reason="customer cancelled")
        assert (result.status_before, result.status_after) == (
            SagaStatus.RUNNING,
            SagaStatus.COMPENSATING,
        )
        assert [(c.topic, c.key, c.message_type) for c in result.commands] == [
            (topics.commands("payment"), saga_id, "payment.refund_payment")
        ]
        (refund,) = await payment.envelopes(1, timeout_s=WAIT_S)
        assert refund.command_id == command_id_for(saga_id, "charge_payment", compensation=True)
        assert refund.compensates == charge.command_id
        assert refund.payload["order_id"] == "o-abort"

        # The abandoned charge succeeds after all: the refund already on its way settles it.
        await send_envelope(
            topics.replies, participant_reply(charge, Outcome.SUCCESS, {"charge_id": "ch-9"})
        )
        await send_envelope(topics.replies, participant_reply(refund, Outcome.SUCCESS, {}))
        (release,) = await inventory.envelopes(1, timeout_s=WAIT_S)
        assert release.message_type == "inventory.release_stock"
        await send_envelope(topics.replies, participant_reply(release, Outcome.SUCCESS, {}))
        compensated = await reaches(ops, saga_id, SagaStatus.COMPENSATED)
        assert compensated.instance.failure_reason == "aborted by carol: customer cancelled"
        timeline = await ops.show(saga_id)

    assert timeline.instance.status is SagaStatus.COMPENSATED
    assert timeline.instance.compensated_steps == ("charge_payment", "reserve_inventory")
    (action,) = [e for e in timeline.history if e.kind == HistoryKind.OPERATOR_ACTION.value]
    assert action.detail == {
        "actor": "carol",
        "action": "abort",
        "reason": "customer cancelled",
        "ignored": False,
    }
    assert action.step == "charge_payment"
    kinds = [(e.kind, e.step) for e in timeline.history]
    assert ("late_reply", "charge_payment") in kinds
    sent = [e.step for e in timeline.history if e.kind == HistoryKind.COMPENSATION_SENT.value]
    assert sent == ["charge_payment", "reserve_inventory"], "one refund, one release"


# --- c) dry runs -----------------------------------------------------------------------------


async def test_a_dry_run_writes_nothing_and_sends_nothing(
    coordinator_settings: Settings,
    running_coordinator: Any,
    topic_reader: Any,
    send_envelope: Any,
    database_url: str,
) -> None:
    topics = Topics(coordinator_settings.kafka.topic_prefix)
    async with (
        running_coordinator(coordinator_settings) as coordinator,
        topic_reader(topics.commands("inventory")) as inventory,
        topic_reader(topics.commands("payment")) as payment,
    ):
        ops: OperatorActions = coordinator.operator
        saga_id = await coordinator.client.start("order", order("o-dry"), saga_id="saga-dry")
        (reserve,) = await inventory.envelopes(1, timeout_s=WAIT_S)
        await send_envelope(
            topics.replies, participant_reply(reserve, Outcome.SUCCESS, {"reservation_id": "r"})
        )
        (charge,) = await payment.envelopes(1, timeout_s=WAIT_S)
        # Published rows are deleted as the relay commits: count once it has.
        await outbox_sent(coordinator.store)
        before = await snapshot(coordinator.store, saga_id)
        history_before = (await ops.show(saga_id)).history

        abort = await ops.abort(saga_id, actor="dave", reason="just looking", dry_run=True)
        assert abort.dry_run
        assert abort.outbox_ids == ()
        assert abort.status_after is SagaStatus.COMPENSATING
        # The charge in flight is undone first: its refund, naming the charge.
        assert [(c.topic, c.key, c.message_type, c.step, c.attempt) for c in abort.commands] == [
            (
                topics.commands("payment"),
                saga_id,
                "payment.refund_payment",
                "charge_payment",
                1,
            )
        ]
        retry = await ops.retry(saga_id, actor="dave", reason="nudge", dry_run=True)
        assert [(c.message_type, c.command_id, c.attempt) for c in retry.commands] == [
            ("payment.charge_payment", charge.command_id, 2)
        ]
        cli = await invoke(
            "abort",
            saga_id,
            "--reason",
            "just looking",
            "--dry-run",
            "--database-url",
            database_url,
            "--topic-prefix",
            topics.prefix,
        )
        assert cli.exit_code == 0, cli.output
        assert "dry run (nothing written or sent)" in cli.stdout
        assert topics.commands("payment") in cli.stdout
        assert "payment.refund_payment" in cli.stdout

        # Nothing was written (no outbox row either), so nothing reaches the command topics.
        assert await snapshot(coordinator.store, saga_id) == before
        await outbox_sent(coordinator.store)
        assert await inventory.published() == []
        assert await payment.published() == []
        after = await ops.show(saga_id)
        assert after.history == history_before
        assert after.instance.status is SagaStatus.RUNNING


# --- d) the CLI on a populated database ------------------------------------------------------


async def _populate(database_url: str) -> None:
    """Two order sagas driven through the engine: one COMPENSATED, one RUNNING."""
    engine = create_engine(database_url, pool_size=1)
    store = SagaStore(engine)
    topics = Topics("cli.")
    start = datetime.now(UTC) - timedelta(minutes=5)

    async def begin(saga_id: str, order_id: str, at: datetime) -> None:
        data = order(order_id).model_dump(mode="json")
        t = start_saga(OrderSaga, saga_id, StartSaga(f"start-{saga_id}", data), at)
        async with engine.begin() as conn:
            await store.insert_sagas(conn, [t.instance])
            await persist(store, conn, topics, [], [t], at)

    async def feed(saga_id: str, event: Callable[[Any], SagaInput], at: datetime) -> None:
        async with engine.begin() as conn:
            inst = (await store.select_sagas_for_update(conn, [saga_id]))[saga_id]
            t = apply(OrderSaga, inst, event(inst), at)
            await persist(store, conn, topics, [t.instance], [t], at)

    def answer(outcome: Outcome, payload: dict[str, Any], error: str | None = None) -> Any:
        return lambda inst: ReplyReceived(
            f"m-{inst.saga_id}-{inst.version}",
            inst.current_step,
            inst.command_id,
            inst.attempt,
            outcome,
            payload,
            error,
        )

    try:
        await begin("saga-show", "o-show", start)
        await feed(
            "saga-show",
            answer(Outcome.SUCCESS, {"reservation_id": "r-1"}),
            start + timedelta(seconds=1),
        )
        await feed(
            "saga-show", answer(Outcome.FAILURE, {}, "card declined"), start + timedelta(seconds=3)
        )
        await feed("saga-show", answer(Outcome.SUCCESS, {}), start + timedelta(seconds=4))
        await begin("saga-run", "o-run", start + timedelta(minutes=1))
    finally:
        await engine.dispose()


async def test_cli_shows_and_lists_sagas_and_reports_errors(database_url: str) -> None:
    await upgrade_database(database_url)
    await _populate(database_url)
    db = ("--database-url", database_url)

    shown = await invoke("show", "saga-show", "--json", *db)
    assert shown.exit_code == 0, shown.output
    document = json.loads(shown.stdout)
    assert document["saga"]["saga_id"] == "saga-show"
    assert document["saga"]["status"] == "COMPENSATED"
    assert document["saga"]["epoch"] == 0
    assert document["saga"]["failure_reason"] == "charge_payment: card declined"
    assert [e["kind"] for e in document["history"]] == [
        "started",
        "command_sent",
        "step_succeeded",
        "command_sent",
        "step_failed",
        "compensation_sent",
        "compensation_succeeded",
        "compensated",
    ]
    assert document["history"][4]["detail"]["error"] == "card declined"

    text_view = await invoke("show", "saga-show", *db)
    assert text_view.exit_code == 0, text_view.output
    out = text_view.stdout
    for expected in (
        "saga saga-show",
        "COMPENSATED",
        "charge_payment: card declined",
        "History",
        "step_failed",
        "error: card declined",
        "Steps",
        "compensation",
        "succeeded",
        "+3.000s",
    ):
        assert expected in out, f"{expected!r} missing from:\n{out}"

    listed = await invoke("list", "--json", *db)
    assert listed.exit_code == 0, listed.output
    assert [s["saga_id"] for s in json.loads(listed.stdout)] == ["saga-run", "saga-show"]
    only = await invoke("list", "--status", "compensated", "--type", "order", "--json", *db)
    assert [s["saga_id"] for s in json.loads(only.stdout)] == ["saga-show"]
    table = await invoke("list", "--limit", "1", *db)
    assert table.exit_code == 0, table.output
    assert "saga-run" in table.stdout
    assert "saga-show" not in table.stdout
    assert "use --offset" in table.stdout
    assert "Data goes back to" in table.stdout
    keyed = await invoke("list", "--key", "order_id=o-show", "--json", *db)
    assert [s["saga_id"] for s in json.loads(keyed.stdout)] == ["saga-show"]
    assert json.loads(keyed.stdout)[0]["business_keys"] == ["order_id=o-show", "customer_id=c-1"]
    bad_key = await invoke("list", "--key", "order_id", *db)
    assert bad_key.exit_code == 2

    missing = await invoke("show", "no-such-saga", *db)
    assert missing.exit_code == 1
    assert missing.stderr.strip() == "error: no saga with id 'no-such-saga'"
    assert missing.stdout == ""
    finished = await invoke("retry", "saga-show", "--reason", "again", *db)
    assert finished.exit_code == 1
    assert "cannot retry saga 'saga-show': it is COMPENSATED" in finished.stderr
    no_reason = await invoke("abort", "saga-run", *db)
    assert no_reason.exit_code == 2
    blank_reason = await invoke("abort", "saga-run", "--reason", " ", *db)
    assert blank_reason.exit_code == 2

    # A real abort from the CLI records the actor ($USER by default) and queues the release.
    aborted = await invoke("abort", "saga-run", "--reason", "test order", "--json", *db)
    assert aborted.exit_code == 0, aborted.output
    result = json.loads(aborted.stdout)
    assert result["actor"] == "tester"
    # Aborted at its first step: the reservation in flight is released (or fenced) first.
    assert result["status_after"] == "COMPENSATING"
    assert [c["message_type"] for c in result["commands"]] == ["inventory.release_stock"]
