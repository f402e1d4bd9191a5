"""Rendering of ``saga show`` (no database): a saga driven through the pure engine."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.console import Console

from coordinator.cli.sagas import render_action, render_timeline, step_phases, summarize
from coordinator.core.machine import apply, start_saga
from coordinator.core.state import (
    OperatorRetry,
    ReplyReceived,
    SagaInput,
    SagaInstance,
    SagaStatus,
    SignalReceived,
    StartSaga,
)
from coordinator.ops.actions import ActionResult, SagaTimeline, SentCommand
from coordinator.store.records import HistoryRecord
from saga_defs.order import OrderSaga
from service_sdk import Outcome
from tests.support.shaped_sagas import approval_saga

START = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
DATA: dict[str, Any] = {
    "order_id": "o-1",
    "customer_id": "c-1",
    "items": [{"sku": "SKU-1", "quantity": 2}],
    "amount_cents": 1500,
}


def _answer(inst: SagaInstance, outcome: Outcome, payload: dict[str, Any], error: str = "") -> Any:
    return ReplyReceived(
        f"m-{len(inst.completed_steps)}-{inst.attempt}-{inst.epoch}",
        inst.current_step,
        inst.command_id,
        inst.attempt,
        outcome,
        payload,
        error or None,
    )


def _timeline() -> SagaTimeline:
    """Reserve succeeds, charge is declined, the release is refused, an operator retries."""
    history: list[HistoryRecord] = []
    t = start_saga(OrderSaga, "saga-1", StartSaga("m-start", DATA), START)
    inst = t.instance

    def keep(at: datetime) -> None:
        for entry in t.history:
            history.append(
                HistoryRecord(
                    len(history) + 1, "saga-1", at, entry.kind.value, entry.step, None, entry.detail
                )
            )

    keep(START)
    steps: list[tuple[int, SagaInput | None]] = [
        (2, None),  # reserve_inventory succeeds
        (5, None),  # charge_payment is declined
        (6, None),  # the release is refused
        (60, OperatorRetry("alice", "warehouse back")),
        (61, None),  # the release succeeds
    ]
    replies = [
        (Outcome.SUCCESS, {"reservation_id": "r-1"}, ""),
        (Outcome.FAILURE, {}, "card declined"),
        (Outcome.FAILURE, {}, "warehouse offline"),
        (Outcome.SUCCESS, {}, ""),
    ]
    for seconds, event in steps:
        if event is None:
            outcome, payload, error = replies.pop(0)
            event = _answer(inst, outcome, payload, error)
        at = START + timedelta(seconds=seconds)
        t = apply(OrderSaga, inst, event, at)
        inst = t.instance
        keep(at)
    return SagaTimeline(inst, tuple(history))


def test_steps_summarise_sends_replies_and_results() -> None:
    timeline = _timeline()
    phases = {(p.step, p.compensation): p for p in step_phases(timeline.instance, timeline.history)}

    reserve = phases[("reserve_inventory", False)]
    assert (reserve.sends, reserve.result) == (1, "succeeded")
    assert reserve.replied is not None
    assert reserve.first_sent is not None
    assert reserve.replied - reserve.first_sent == timedelta(seconds=2)
    assert phases[("charge_payment", False)].result == "failed: card declined"
    release = phases[("reserve_inventory", True)]
    assert (release.sends, release.result) == (2, "succeeded")


def test_a_running_step_awaits_and_an_abandoned_one_has_no_reply() -> None:
    timeline = _timeline()
    running = replace(timeline.instance, status=SagaStatus.RUNNING, current_step="charge_payment")
    history = tuple(r for r in timeline.history if r.id <= 4)  # up to charge_payment's send
    (charge,) = [p for p in step_phases(running, history) if p.step == "charge_payment"]
    assert charge.result == "awaiting reply"
    done = replace(running, status=SagaStatus.COMPENSATED, current_step=None)
    (charge,) = [p for p in step_phases(done, history) if p.step == "charge_payment"]
    assert charge.result == "no reply"


def test_summaries_name_the_operator_and_the_error() -> None:
    action = {"actor": "alice", "action": "retry", "reason": "warehouse back"}
    assert summarize("operator_action", action) == "retry by alice: warehouse back"
    detail = {"command_id": "0123456789abcdef", "attempt": 2, "outcome": "failure", "error": "no"}
    assert summarize("step_failed", detail) == "cmd 01234567, attempt 2, failure, error: no"


def test_show_renders_header_history_and_steps() -> None:
    console = Console(record=True, width=200)
    render_timeline(console, _timeline(), START + timedelta(minutes=5))
    out = console.export_text()

    for expected in (
        "saga saga-1",
        "COMPENSATED",
        "epoch",
        "compensation of reserve_inventory failed: warehouse offline",
        "error: card declined",
        "operator_action",
        "retry by alice: warehouse back",
        "+1m00s",
        "error: warehouse offline",
        "compensation",
    ):
        assert expected in out, f"{expected!r} missing from:\n{out}"


def test_error_text_is_not_read_as_markup() -> None:
    timeline = _timeline()
    inst = replace(timeline.instance, failure_reason="bad [bold]thing[/bold]")
    console = Console(record=True, width=200)
    render_timeline(console, replace(timeline, instance=inst), START)
    assert "bad [bold]thing[/bold]" in console.export_text()


def test_a_dry_run_lists_what_would_be_sent() -> None:
    result = ActionResult(
        saga_id="saga-1",
        action="abort",
        actor="bob",
        reason="stop",
        dry_run=True,
        changed=True,
        status_before=SagaStatus.RUNNING,
        status_after=SagaStatus.COMPENSATING,
        epoch=0,
        commands=(
            SentCommand("inventory.commands", "saga-1", "inventory.release_stock", "r", "c1", 1),
        ),
        events=("saga.compensating",),
        outbox_ids=(),
    )
    console = Console(record=True, width=200)
    render_action(console, result)
    out = console.export_text()
    assert "dry run (nothing written or sent)" in out
    assert "inventory.commands" in out
    assert "inventory.release_stock" in out
    assert result.as_dict()["commands"][0]["topic"] == "inventory.commands"


def test_show_links_a_child_to_its_parent_and_a_parent_to_its_children() -> None:
    timeline = _timeline()
    child = replace(
        timeline.instance,
        saga_id="child-1",
        saga_type="award_points",
        status=SagaStatus.COMPLETED,
        parent_saga_id="saga-1",
        parent_step="points",
    )
    parent_view = replace(timeline, children=(child,))
    console = Console(record=True, width=200)
    render_timeline(console, parent_view, START)
    out = console.export_text()
    assert "child-1 (award_points, for points) COMPLETED" in out
    assert parent_view.as_dict()["children"][0]["saga_id"] == "child-1"

    console = Console(record=True, width=200)
    render_timeline(console, SagaTimeline(child, timeline.history), START)
    out = console.export_text()
    assert "saga-1 (its step points)" in out
    assert SagaTimeline(child, ()).as_dict()["saga"]["parent_saga_id"] == "saga-1"


def test_show_tells_signals_and_waits_apart() -> None:
    saga = approval_saga()
    history: list[HistoryRecord] = []

    def keep(t: Any, at: datetime) -> SagaInstance:
        for entry in t.history:
            history.append(
                HistoryRecord(
                    len(history) + 1, "a-1", at, entry.kind.value, entry.step, None, entry.detail
                )
            )
        instance: SagaInstance = t.instance
        return instance

    inst = keep(start_saga(saga, "a-1", StartSaga("m", {"order_id": "o"}), START), START)
    at = START + timedelta(seconds=1)
    inst = keep(
        apply(saga, inst, SignalReceived("sig-1", "approval", {"approved_by": "x"}), at), at
    )
    kept = Console(record=True, width=200)
    render_timeline(kept, SagaTimeline(inst, tuple(history)), at)
    assert "approval (sig-1): taken when their wait begins" in kept.export_text()
    at = START + timedelta(seconds=2)
    inst = keep(apply(saga, inst, _answer(inst, Outcome.SUCCESS, {}), at), at)
    phases = {p.step: p.result for p in step_phases(inst, tuple(history))}
    assert phases["approve"] == "signal received"
    assert phases["confirm"] == "awaiting reply"
    kinds = {r.kind: summarize(r.kind, r.detail) for r in history}
    assert kinds["signal_kept"] == 'signal approval, payload {"approved_by":"x"}'
    assert kinds["signal_received"].startswith("signal approval, kept before the wait")
