"""Property tests of the saga shapes: any interleaving of replies (success, failure,
retryable; current, older, duplicated), deadlines, pickups, signals and operator actions over
a definition mixing every shape ends with every succeeded step kept (COMPLETED) or
compensated exactly once (COMPENSATED), and never terminal with a command unanswered or
unfenced."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import event as note_event
from hypothesis import strategies as st

from coordinator.core.definition import (
    ChildCompensation,
    ChildSaga,
    Parallel,
    SagaDefinition,
    Step,
    Timer,
    WaitForSignal,
)
from coordinator.core.errors import InvalidOperatorActionError
from coordinator.core.machine import apply, start_saga
from coordinator.core.state import (
    AwaitKind,
    CommandPickedUp,
    CommandPurpose,
    DeadlineFired,
    HistoryKind,
    OperatorAbort,
    OperatorRetry,
    ReplyReceived,
    SagaInput,
    SagaInstance,
    SagaStatus,
    SignalReceived,
    StartSaga,
    command_id_for,
)
from service_sdk import Outcome
from tests.unit.shapes_support import NOW, SAGA_ID, Approval, Trip, step


class Mixed(SagaDefinition[Trip]):
    name = "mixed"
    data_model = Trip
    steps = (
        step("pay"),
        step("check_fraud", undo=False, run_if=lambda d: d.amount > 1000),
        Parallel[Trip](
            "book",
            (
                step("book_flight", field="flight"),
                step("book_hotel", field="hotel"),
                step("book_car", undo=False, field="car"),
            ),
        ),
        WaitForSignal[Trip](
            "approval",
            signal="approved",
            timeout=timedelta(hours=1),
            payload_model=Approval,
            on_signal=lambda d, a: d.model_copy(update={"approved_by": a.manager}),
            run_if=lambda d: d.amount > 500,
        ),
        ChildSaga[Trip](
            "loyalty",
            saga_type="points",
            build=lambda d: {"amount": d.amount},
            compensation=ChildCompensation[Trip]("revoke_points", lambda d: {}),
        ),
        Timer[Trip]("reminder", delay=lambda d: timedelta(hours=24)),
        WaitForSignal[Trip](
            "feedback", signal="feedback", timeout=timedelta(hours=2), on_timeout="continue"
        ),
        Parallel[Trip]("finish", (step("send_tickets", undo=False), step("invoice"))),
    )


UNITS = tuple(unit.name for unit in Mixed.units())
UNDOABLE = frozenset(
    unit.name
    for unit in Mixed.units()
    if (isinstance(unit, Step | ChildSaga)) and unit.compensation is not None
)
OUTCOMES = st.sampled_from(list(Outcome))
UNDO_PAYLOADS = st.sampled_from([{}, {"fenced": True}, {"executed": "SUCCESS"}])
PROGRESS = st.tuples(st.just("progress"), st.integers(0, 3))
"""What moves the saga on: a success, a timer firing, the approval (weighted up below)."""
ACTIONS = st.one_of(
    PROGRESS,
    PROGRESS,
    PROGRESS,
    PROGRESS,
    PROGRESS,
    st.tuples(st.just("awaited"), st.integers(0, 3), OUTCOMES, st.integers(0, 1), UNDO_PAYLOADS),
    st.tuples(st.just("forward"), st.sampled_from(UNITS), OUTCOMES, st.integers(1, 3)),
    st.tuples(st.just("undo"), st.sampled_from(UNITS), OUTCOMES, st.integers(1, 3), UNDO_PAYLOADS),
    st.tuples(st.just("deadline"), st.integers(0, 3), st.booleans(), st.booleans()),
    st.tuples(st.just("pickup"), st.integers(0, 3)),
    st.tuples(
        st.just("signal"),
        st.sampled_from(["approved", "feedback", "other"]),
        st.sampled_from([{"manager": "ann"}, {}, {"manager": 5}]),
    ),
    st.tuples(st.just("again"), st.integers(0, 50)),
    st.tuples(st.just("abort")),
    st.tuples(st.just("retry")),
)


def _id(name: str, *, undo: bool, epoch: int) -> str:
    return command_id_for(SAGA_ID, name, compensation=undo, epoch=epoch)


def _success_payload(name: str) -> dict[str, Any]:
    return {"points": 3} if name == "loyalty" else {"ref": f"{name}-ref"}


def _to_input(
    inst: SagaInstance,
    action: tuple[Any, ...],
    index: int,
    sent: set[tuple[str, bool]],
    past: list[SagaInput],
) -> SagaInput:
    """The input an action stands for; participants answer only what they received."""
    kind = action[0]
    mid = f"m-{index}"
    entries = inst.awaiting
    if kind == "progress" and entries:
        entry = entries[action[1] % len(entries)]
        if entry.kind is AwaitKind.SIGNAL and entry.step == "approval":
            return SignalReceived(mid, "approved", {"manager": "ann"})
        if entry.kind in (AwaitKind.SIGNAL, AwaitKind.TIMER):
            return DeadlineFired(entry.step, entry.command_id, entry.attempt)
        payload = {} if entry.is_undo else _success_payload(entry.step)
        return ReplyReceived(
            mid, entry.step, entry.command_id, entry.attempt, Outcome.SUCCESS, payload
        )
    if kind in ("awaited", "deadline", "pickup") and entries:
        entry = entries[action[1] % len(entries)]
        if kind == "deadline":
            attempt = entry.attempt if action[2] else entry.attempt + 1
            return DeadlineFired(
                entry.step, entry.command_id, attempt, 0.5, participant_alive=action[3]
            )
        if kind == "pickup":
            return CommandPickedUp(entry.step, entry.command_id, entry.attempt, NOW)
        outcome = action[2]
        payload: dict[str, Any] = {}
        if outcome is Outcome.SUCCESS:
            payload = action[4] if entry.is_undo else _success_payload(entry.step)
        attempt = max(entry.attempt - action[3], 1)
        return ReplyReceived(mid, entry.step, entry.command_id, attempt, outcome, payload, "e")
    if kind in ("forward", "undo"):
        name, outcome, attempt = action[1], action[2], action[3]
        undo = kind == "undo"
        cid = _id(name, undo=undo, epoch=inst.epoch if index % 2 else 0)
        if (name, undo) not in sent:
            cid = "unknown-command"
        payload = {}
        if outcome is Outcome.SUCCESS:
            payload = action[4] if undo else _success_payload(name)
        return ReplyReceived(mid, name, cid, attempt, outcome, payload, "e")
    if kind == "signal":
        return SignalReceived(mid, action[1], action[2])
    if kind == "again" and past:
        return past[action[1] % len(past)]  # a redelivery
    if kind == "abort":
        return OperatorAbort("op", "prop")
    return OperatorRetry("op", "prop")


@settings(
    max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(st.sampled_from([100, 800, 5000]), st.lists(ACTIONS, min_size=10, max_size=80))
def test_any_interleaving_settles_every_step(amount: int, actions: list[tuple[Any, ...]]) -> None:
    first = start_saga(Mixed, SAGA_ID, StartSaga("m-start", {"amount": amount}), NOW)
    inst = first.instance
    sent: set[tuple[str, bool]] = set()
    settled: set[str] = set()
    undo_successes: Counter[str] = Counter()
    past: list[SagaInput] = []
    transitions = [first]
    now = NOW
    for index, action in enumerate(actions):
        for command in transitions[-1].commands:
            undo_ids = {_id(command.step, undo=True, epoch=e) for e in range(inst.epoch + 1)}
            sent.add((command.step, command.command_id in undo_ids))
        for child in transitions[-1].child_starts:
            sent.add((child.parent_step, child.saga_type == "revoke_points"))
        now += timedelta(minutes=30)
        event = _to_input(inst, action, index, sent, past)
        past.append(event)
        try:
            t = apply(Mixed, inst, event, now)
        except InvalidOperatorActionError:
            assert isinstance(event, OperatorAbort | OperatorRetry)
            continue
        transitions.append(t)
        after = t.instance
        assert t.history or isinstance(event, CommandPickedUp), "every transition is recorded"
        assert t.changed == (after is not inst)
        if t.rejection is not None:
            assert isinstance(event, SignalReceived)
            assert after is inst
        for entry in t.history:
            if entry.step is None:
                continue
            if entry.kind is HistoryKind.COMPENSATION_SUCCEEDED:
                undo_successes[entry.step] += 1
            if (
                entry.kind is HistoryKind.STEP_SUCCEEDED
                or (entry.kind is HistoryKind.STEP_FAILED and not entry.detail.get("in_doubt"))
                or (
                    entry.kind is HistoryKind.COMPENSATION_SUCCEEDED
                    and entry.detail.get("in_doubt")
                )
            ):
                settled.add(entry.step)
        # Forward commands go out only while running, for what the saga then awaits.
        for command in t.commands:
            if command.purpose is CommandPurpose.FORWARD:
                assert after.status is SagaStatus.RUNNING
                assert after.awaited(command.step, command.command_id) is not None
        # Each step is undone at most once, and only what was done (or given up).
        assert all(count == 1 for count in undo_successes.values()), undo_successes
        assert len(set(after.compensated_steps)) == len(after.compensated_steps)
        assert set(after.compensated_steps) <= {name for name, undo in sent if not undo} | set(
            after.completed_steps
        )
        assert not set(after.skipped_steps) & set(after.completed_steps)
        # The scalar fields describe the entry due first.
        live = [e.deadline_at for e in after.awaiting if e.deadline_at is not None]
        assert after.deadline_at == (min(live) if live else None)
        if after.status is SagaStatus.RUNNING:
            assert after.awaiting
            assert all(e.deadline_at is not None for e in after.awaiting)
            assert all(not e.is_undo for e in after.awaiting)
        if after.status is SagaStatus.FAILED:
            assert after.awaiting
            assert all(e.deadline_at is None and e.is_undo for e in after.awaiting)
        if after.status in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED):
            # Settled: nothing awaited, every command it sent answered or fenced.
            assert after.awaiting == ()
            forward_sent = {name for name, undo in sent if not undo} | {
                c.step for c in t.commands if c.purpose is CommandPurpose.FORWARD
            }
            assert forward_sent <= settled, (forward_sent, settled)
        if after.status is SagaStatus.COMPLETED:
            assert after.compensated_steps == ()
            assert set(after.completed_steps) | set(after.skipped_steps) == set(UNITS)
        if after.status is SagaStatus.COMPENSATED:
            # Every succeeded step that can be undone was, exactly once.
            assert UNDOABLE & set(after.completed_steps) <= set(after.compensated_steps)
        if inst.status is SagaStatus.COMPLETED:
            assert after.status is SagaStatus.COMPLETED
        inst = after
    note_event(f"ended {inst.status.value}")
