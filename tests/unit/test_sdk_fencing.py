"""The participant SDK's tombstones and heartbeats without I/O: how an undo is answered, the
batch look-ahead, the built-in ``saga.fence``, and the pickups a heartbeat reports."""

from __future__ import annotations

import asyncio
from typing import ClassVar

import pytest

from service_sdk import (
    FENCE_MESSAGE_TYPE,
    Command,
    Envelope,
    HandlerContext,
    HandlerRegistrationError,
    MessageKind,
    Outcome,
    Service,
)
from service_sdk._private import fencing
from service_sdk._private.fencing import Target, decide_undo, target_of
from service_sdk._private.heartbeats import HeartbeatPublisher, PickupLog, instance_id
from service_sdk._private.idempotency import CommandStatus, ProcessedCommand
from service_sdk.contract import Heartbeat
from service_sdk.service import Fence, reply_envelope
from service_sdk.testing import command_envelope, invoke


class Reserve(Command):
    message_type: ClassVar[str] = "test.reserve"
    sku: str


class Release(Command):
    message_type: ClassVar[str] = "test.release"
    sku: str


def _service() -> Service:
    service = Service("stock")

    @service.handles(Reserve)
    async def reserve(cmd: Reserve, ctx: HandlerContext) -> None:
        return None

    @service.handles(Release)
    async def release(cmd: Release, ctx: HandlerContext) -> dict[str, bool]:
        return {"released": True}

    return service


def _forward(
    command_id: str = "x", *, saga_id: str = "s1", step: str | None = "reserve"
) -> Envelope:
    return command_envelope(
        Reserve(sku="A"), saga_id=saga_id, saga_type="order", step=step, command_id=command_id
    )


def _undo(
    compensates: str = "x", *, command_id: str = "u", saga_id: str = "s1", fence: bool = False
) -> Envelope:
    command: Command = Fence() if fence else Release(sku="A")
    return command_envelope(
        command,
        saga_id=saga_id,
        saga_type="order",
        step="reserve",
        command_id=command_id,
        compensates=compensates,
    )


def _row(status: CommandStatus, outcome: Outcome | None = None) -> ProcessedCommand:
    command = _forward()
    reply = None if outcome is None else reply_envelope(command, "stock", outcome, payload={})
    return ProcessedCommand(command_id="x", status=status, command=command, reply=reply)


# -- how an undo is answered -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "target"),
    [
        (None, Target.UNSEEN),
        (_row(CommandStatus.FENCED), Target.FENCED),
        (_row(CommandStatus.PENDING), Target.PENDING),
        (_row(CommandStatus.DONE, Outcome.SUCCESS), Target.SUCCEEDED),
        (_row(CommandStatus.DONE, Outcome.FAILURE), Target.REFUSED),
    ],
)
def test_target_of_a_record(row: ProcessedCommand | None, target: Target) -> None:
    assert target_of(row) is target


@pytest.mark.parametrize("fence", [False, True])
@pytest.mark.parametrize("target", [Target.UNSEEN, Target.FENCED, Target.PENDING, Target.REFUSED])
def test_an_undo_of_a_command_without_effect_is_answered_fenced(
    fence: bool, target: Target
) -> None:
    answer = decide_undo(fence=fence, target=target)
    assert answer is not None
    assert answer.payload == {"fenced": True}
    assert answer.result == "tombstoned"


def test_a_compensation_of_a_command_that_succeeded_runs_its_handler() -> None:
    assert decide_undo(fence=False, target=Target.SUCCEEDED) is None


def test_a_fence_of_a_command_that_succeeded_reports_the_effect() -> None:
    answer = decide_undo(fence=True, target=Target.SUCCEEDED)
    assert answer is not None
    assert answer.payload == {"fenced": False, "executed": "success"}
    assert answer.result == "unfenceable"


def test_the_refusal_of_a_fenced_command() -> None:
    command = _forward(command_id="x")
    refused = fencing.refusal(command, "stock", "u")
    assert refused.kind is MessageKind.REPLY
    assert refused.outcome is Outcome.FAILURE
    assert refused.error == fencing.FENCED_ERROR
    assert refused.error.startswith("fenced:")
    assert refused.payload == {"fenced": True, "fenced_by": "u"}
    assert (refused.command_id, refused.message_type, refused.step) == (
        "x",
        "test.reserve",
        "reserve",
    )


def test_undo_fields_that_break_the_contract() -> None:
    assert fencing.contract_error(_undo()) is None
    assert fencing.contract_error(_forward()) is None
    assert fencing.contract_error(_undo(fence=True)) is None
    unnamed_fence = _undo(fence=True).model_copy(update={"compensates": None})
    assert fencing.contract_error(unnamed_fence) == "a saga.fence command without compensates"
    itself = _undo(compensates="u", command_id="u")
    assert fencing.contract_error(itself) == "a command that compensates itself"


# -- the look-ahead --------------------------------------------------------------------------


def test_the_look_ahead_names_the_commands_of_the_batch_undos() -> None:
    service = _service()
    first, second = _undo("x", command_id="u1"), _undo("x", command_id="u2")
    fence = _undo("y", command_id="f", fence=True)
    unknown = _undo("z", command_id="v").model_copy(update={"message_type": "test.unknown"})
    reply = _undo("w", command_id="r").model_copy(update={"kind": MessageKind.REPLY})
    batch = [_forward("x"), first, second, fence, unknown, reply, _forward("z")]

    ahead = fencing.fences_ahead(batch, service.understands)

    assert ahead == {"x": first, "y": fence}
    assert fencing.fenced_by(ahead, _forward("x")) is first
    assert fencing.fenced_by(ahead, _forward("y")) is fence
    assert fencing.fenced_by(ahead, _forward("z")) is None
    # An undo names a command of its own saga only.
    assert fencing.fenced_by(ahead, _forward("x", saga_id="s2")) is None


# -- the built-in fence ----------------------------------------------------------------------


def test_every_service_understands_the_fence_without_a_handler() -> None:
    service = _service()
    assert service.understands(FENCE_MESSAGE_TYPE)
    assert service.understands("test.reserve")
    assert not service.understands("test.unknown")
    assert FENCE_MESSAGE_TYPE not in service.message_types
    fence = _undo(fence=True).model_copy(update={"payload": {"from_a_newer_coordinator": 1}})
    assert isinstance(service.parse(fence), Fence)


def test_the_fence_cannot_be_registered() -> None:
    with pytest.raises(HandlerRegistrationError, match="answered by the SDK itself"):
        Service("svc").handles(Fence)


async def test_the_fence_has_no_handler_to_invoke() -> None:
    with pytest.raises(TypeError, match="ServiceRunner answers it"):
        await invoke(_service(), _undo(fence=True))


async def test_invoke_runs_a_compensation_whatever_it_compensates() -> None:
    reply = await invoke(_service(), _undo("x"))
    assert (reply.outcome, reply.payload) == (Outcome.SUCCESS, {"released": True})


def test_command_envelope_carries_compensates() -> None:
    envelope = _undo("x")
    assert envelope.compensates == "x"
    assert Envelope.model_validate_json(envelope.to_bytes()) == envelope


# -- pickups and heartbeats ------------------------------------------------------------------


def test_a_pickup_is_reported_until_a_heartbeat_lists_it() -> None:
    log = PickupLog()
    log.started(_forward("running"))
    log.started(_forward("dead-lettered"))
    (running, dead) = log.report()
    assert (running.command_id, running.saga_id, running.saga_type) == ("running", "s1", "order")
    assert (running.step, running.attempt) == ("reserve", 1)
    assert log.report() == (running, dead)  # a failed heartbeat: reported again next time
    log.reported((running, dead))
    assert log.report() == ()


def test_an_answered_command_is_not_reported() -> None:
    log = PickupLog()
    log.started(_forward("quick"))
    log.answered("quick")
    log.answered("never-started")
    assert log.report() == ()


def test_a_command_picked_up_again_is_reported_again() -> None:
    log = PickupLog()
    log.started(_forward("x"))
    listed = log.report()
    log.started(_forward("x").model_copy(update={"attempt": 2}))
    log.reported(listed)  # the heartbeat listed attempt 1; attempt 2 is news
    assert [(p.command_id, p.attempt) for p in log.report()] == [("x", 2)]


def test_pickups_without_a_step_or_beyond_the_limit_are_not_kept() -> None:
    log = PickupLog(limit=2)
    log.started(_forward("no-step", step=None))
    for command_id in ("a", "b", "c"):
        log.started(_forward(command_id))
    assert [p.command_id for p in log.report()] == ["b", "c"]
    disabled = PickupLog(enabled=False)
    disabled.started(_forward("a"))
    assert len(disabled) == 0


def test_instance_ids_are_unique() -> None:
    assert instance_id() != instance_id()
    assert len(instance_id()) <= 200


class _FlakySender:
    """Records heartbeats; fails the sends it is told to; signals each send."""

    def __init__(self, failures: int = 0) -> None:
        self.sent: list[Heartbeat] = []
        self.attempts = 0
        self.failures = failures
        self.arrived = asyncio.Event()

    async def __call__(self, heartbeat: Heartbeat) -> None:
        self.attempts += 1
        self.arrived.set()
        if self.attempts <= self.failures:
            raise ConnectionError("broker away")
        self.sent.append(heartbeat)

    async def next_send(self) -> None:
        self.arrived.clear()
        await self.arrived.wait()


async def test_the_publisher_sends_at_once_then_every_interval_and_lists_pickups_once() -> None:
    stop = asyncio.Event()
    pickups = PickupLog()
    pickups.started(_forward("running"))
    send = _FlakySender()
    publisher = HeartbeatPublisher(
        service="stock", instance="i-1", interval_s=0.01, send=send, pickups=pickups, stop=stop
    )
    task = asyncio.create_task(publisher.run())
    async with asyncio.timeout(10):
        while len(send.sent) < 3:
            await send.next_send()
    stop.set()
    async with asyncio.timeout(10):
        await task
    first, *later = send.sent
    assert (first.service, first.instance) == ("stock", "i-1")
    assert [p.command_id for p in first.in_progress] == ["running"]
    assert all(beat.in_progress == () for beat in later)
    assert publisher.sent == len(send.sent)


async def test_a_failed_heartbeat_is_retried_and_keeps_its_pickups() -> None:
    stop = asyncio.Event()
    pickups = PickupLog()
    pickups.started(_forward("running"))
    send = _FlakySender(failures=2)
    publisher = HeartbeatPublisher(
        service="stock", instance="i-1", interval_s=0.01, send=send, pickups=pickups, stop=stop
    )
    task = asyncio.create_task(publisher.run())
    async with asyncio.timeout(10):
        while not send.sent:
            await send.next_send()
    stop.set()
    async with asyncio.timeout(10):
        await task
    assert send.attempts >= 3
    assert [p.command_id for p in send.sent[0].in_progress] == ["running"]


async def test_cancelling_the_publisher_propagates() -> None:
    stop = asyncio.Event()
    send = _FlakySender()
    publisher = HeartbeatPublisher(
        service="stock", instance="i-1", interval_s=60, send=send, pickups=PickupLog(), stop=stop
    )
    task = asyncio.create_task(publisher.run())
    async with asyncio.timeout(10):
        while not send.sent:
            await send.next_send()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_the_publisher_needs_a_positive_interval() -> None:
    with pytest.raises(ValueError, match="more than 0"):
        HeartbeatPublisher(
            service="s",
            instance="i",
            interval_s=0,
            send=_FlakySender(),
            pickups=PickupLog(),
            stop=asyncio.Event(),
        )
