"""The participant SDK without I/O: declaring handlers, dispatching through
``service_sdk.testing``, Kafka settings and dead-letter headers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel, ValidationError
from sqlalchemy import text

import service_sdk
from service_sdk import (
    BatchContext,
    BatchResult,
    Command,
    CommandRejected,
    DeadLetterHeader,
    Deferred,
    Envelope,
    HandlerContext,
    HandlerRegistrationError,
    Header,
    KafkaConfig,
    MessageKind,
    Outcome,
    Service,
    UnknownMessageTypeError,
    dead_letter_headers,
)
from service_sdk.partitioner import KeyPartitioner
from service_sdk.testing import HandlerDeferredError, command_envelope, invoke


class Ping(Command):
    message_type: ClassVar[str] = "test.ping"
    text: str
    mode: str = "ok"


class Pong(BaseModel):
    echo: str


class Other(Command):
    message_type: ClassVar[str] = "test.other"


class Unnamed(Command):
    pass


def _service() -> Service:
    service = Service("pinger", schema="pinger")

    @service.handles(Ping)
    async def ping(cmd: Ping, ctx: HandlerContext) -> Pong | dict[str, Any] | Deferred | None:
        if cmd.mode == "reject":
            raise CommandRejected("no pings today", data={"why": "closed"})
        if cmd.mode == "retry":
            raise CommandRejected("busy", retryable=True)
        if cmd.mode == "defer":
            return ctx.defer()
        if cmd.mode == "dict":
            return {"saga": ctx.saga_id, "command": ctx.command_id, "attempt": ctx.attempt}
        if cmd.mode == "none":
            return None
        if cmd.mode == "db":
            await ctx.connection.execute(text("SELECT 1"))
        if cmd.mode == "boom":
            raise RuntimeError("kaput")
        return Pong(echo=cmd.text)

    return service


# -- declaring handlers ----------------------------------------------------------------------


def test_handles_registers_and_returns_the_function() -> None:
    service = Service("svc")

    async def handler(cmd: Ping, ctx: HandlerContext) -> None:
        return None

    assert service.handles(Ping)(handler) is handler
    assert service.message_types == frozenset({"test.ping"})
    assert service.registration("test.ping").model is Ping
    assert service.schema == "svc"


def test_handles_rejects_a_model_that_is_not_a_command() -> None:
    with pytest.raises(HandlerRegistrationError, match=r"not a service_sdk\.Command"):
        Service("svc").handles(Pong)  # type: ignore[type-var]


def test_handles_rejects_a_command_without_message_type() -> None:
    with pytest.raises(HandlerRegistrationError, match="no message_type"):
        Service("svc").handles(Unnamed)


def test_handles_rejects_the_same_type_twice() -> None:
    service = Service("svc")

    @service.handles(Ping)
    async def first(cmd: Ping, ctx: HandlerContext) -> None:
        return None

    with pytest.raises(HandlerRegistrationError, match="already handled by"):
        service.handles(Ping)


def test_handles_rejects_a_sync_handler() -> None:
    def sync(cmd: Other, ctx: HandlerContext) -> None:
        return None

    with pytest.raises(HandlerRegistrationError, match="must be an async def"):
        Service("svc").handles(Other)(sync)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "schema"), [("", None), ("Bad Name", None), ("ok", "no-dashes"), ("ok", "1st")]
)
def test_service_rejects_bad_names(name: str, schema: str | None) -> None:
    with pytest.raises(HandlerRegistrationError):
        Service(name, schema=schema)


def test_schema_defaults_to_the_name_with_underscores() -> None:
    assert Service("order-billing").schema == "order_billing"


def test_unknown_type_is_reported() -> None:
    with pytest.raises(UnknownMessageTypeError, match=r"no handler for 'test\.other'"):
        _service().registration("test.other")


# -- dispatching through service_sdk.testing ---------------------------------------------------


async def test_success_reply_carries_the_command_facts() -> None:
    command = command_envelope(
        Ping(text="hi"),
        saga_id="saga-1",
        saga_type="order",
        step="ping_step",
        attempt=2,
        command_id="cmd-1",
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
    reply = await invoke(_service(), command)
    assert reply.kind is MessageKind.REPLY
    assert reply.outcome is Outcome.SUCCESS
    assert reply.payload == {"echo": "hi"}
    assert reply.error is None
    assert (reply.message_type, reply.source) == ("test.ping", "pinger")
    assert (reply.saga_id, reply.saga_type, reply.step) == ("saga-1", "order", "ping_step")
    assert (reply.attempt, reply.command_id) == (2, "cmd-1")
    assert reply.traceparent == command.traceparent
    assert reply.message_id != command.message_id


async def test_mapping_and_none_results() -> None:
    reply = await invoke(_service(), Ping(text="x", mode="dict"), saga_id="s9", command_id="c9")
    assert reply.payload == {"saga": "s9", "command": "c9", "attempt": 1}
    assert (await invoke(_service(), Ping(text="x", mode="none"))).payload == {}


async def test_rejection_is_a_failure_reply() -> None:
    reply = await invoke(_service(), Ping(text="x", mode="reject"))
    assert reply.outcome is Outcome.FAILURE
    assert reply.error == "no pings today"
    assert reply.payload == {"why": "closed"}


async def test_retryable_rejection_is_a_retryable_reply() -> None:
    reply = await invoke(_service(), Ping(text="x", mode="retry"))
    assert (reply.outcome, reply.error) == (Outcome.RETRYABLE, "busy")


async def test_deferred_handler_raises_in_invoke() -> None:
    with pytest.raises(HandlerDeferredError) as caught:
        await invoke(_service(), Ping(text="x", mode="defer"), command_id="c-def")
    assert caught.value.deferred == Deferred(command_id="c-def")


async def test_unexpected_errors_propagate() -> None:
    with pytest.raises(RuntimeError, match="kaput"):
        await invoke(_service(), Ping(text="x", mode="boom"))


async def test_connection_is_required_only_when_used() -> None:
    with pytest.raises(RuntimeError, match="needs a database connection"):
        await invoke(_service(), Ping(text="x", mode="db"))


async def test_invoke_validates_like_the_runner() -> None:
    with pytest.raises(UnknownMessageTypeError):
        await invoke(_service(), Other())
    bad = command_envelope(Ping(text="x")).model_copy(update={"payload": {"text": 5}})
    with pytest.raises(ValidationError):
        await invoke(_service(), bad)


# -- configuration -------------------------------------------------------------------------


# -- batch handlers ----------------------------------------------------------------------------


def _batch_service(seen: list[list[str]]) -> Service:
    service = Service("batcher", schema="batcher")

    @service.handles_batch(Ping)
    async def pings(commands: Sequence[Ping], ctx: BatchContext) -> list[BatchResult]:
        seen.append([cmd.text for cmd in commands])
        if any(cmd.mode == "boom" for cmd in commands):
            raise RuntimeError("kaput")
        if any(cmd.mode == "short" for cmd in commands):
            return []
        return [
            CommandRejected("no pings today", data={"why": cmd.text})
            if cmd.mode == "reject"
            else ctx.commands[i].defer()
            if cmd.mode == "defer"
            else {"echo": cmd.text, "command": ctx.commands[i].command_id}
            for i, cmd in enumerate(commands)
        ]

    return service


async def test_a_batch_handler_answers_one_command_through_invoke() -> None:
    seen: list[list[str]] = []
    service = _batch_service(seen)
    reply = await invoke(service, Ping(text="hi"), command_id="c1")
    assert (reply.outcome, reply.payload) == (Outcome.SUCCESS, {"echo": "hi", "command": "c1"})
    refused = await invoke(service, Ping(text="no", mode="reject"))
    assert (refused.outcome, refused.error) == (Outcome.FAILURE, "no pings today")
    assert refused.payload == {"why": "no"}
    with pytest.raises(RuntimeError, match="kaput"):
        await invoke(service, Ping(text="x", mode="boom"))
    with pytest.raises(HandlerDeferredError):
        await invoke(service, Ping(text="x", mode="defer"))
    assert seen == [["hi"], ["no"], ["x"], ["x"]]


async def test_dispatch_many_turns_each_result_into_its_reply() -> None:
    seen: list[list[str]] = []
    service = _batch_service(seen)
    commands = [Ping(text="a"), Ping(text="b", mode="reject"), Ping(text="c", mode="defer")]
    envelopes = [command_envelope(c, command_id=f"c-{c.text}") for c in commands]
    assert service.batched("test.ping")
    replies = await service.dispatch_many(envelopes, commands, None)
    assert seen == [["a", "b", "c"]]
    first, second, third = replies
    assert isinstance(first, Envelope)
    assert isinstance(second, Envelope)
    assert (first.outcome, first.command_id, first.payload["command"]) == (
        Outcome.SUCCESS,
        "c-a",
        "c-a",
    )
    assert (second.outcome, second.command_id, second.error) == (
        Outcome.FAILURE,
        "c-b",
        "no pings today",
    )
    assert third == Deferred(command_id="c-c")


async def test_a_batch_handler_must_answer_every_command() -> None:
    service = _batch_service([])
    commands = [Ping(text="a", mode="short"), Ping(text="b")]
    envelopes = [command_envelope(c) for c in commands]
    with pytest.raises(TypeError, match="one result per command"):
        await service.dispatch_many(envelopes, commands, None)
    with pytest.raises(TypeError, match="one result per command"):
        await invoke(service, commands[0])


async def test_dispatch_many_takes_only_commands_of_its_batch_type() -> None:
    service = _batch_service([])

    @service.handles(Other)
    async def other(cmd: Other, ctx: HandlerContext) -> None:
        return None

    assert not service.batched("test.other")
    mixed = [command_envelope(Ping(text="a")), command_envelope(Other())]
    with pytest.raises(TypeError, match="no batch handler"):
        await service.dispatch_many(mixed, [Ping(text="a"), Other()], None)


def test_handles_batch_is_checked_like_handles() -> None:
    service = _batch_service([])
    with pytest.raises(HandlerRegistrationError, match="already handled by"):
        service.handles_batch(Ping)
    with pytest.raises(HandlerRegistrationError, match="already handled by"):
        service.handles(Ping)

    def sync(commands: Sequence[Other], ctx: BatchContext) -> list[BatchResult]:
        return []

    with pytest.raises(HandlerRegistrationError, match="must be an async def"):
        service.handles_batch(Other)(sync)  # type: ignore[arg-type]
    with pytest.raises(HandlerRegistrationError, match=r"not a service_sdk\.Command"):
        service.handles_batch(Pong)  # type: ignore[type-var]


def test_producer_kwargs_always_ask_all_replicas() -> None:
    idempotent = KafkaConfig("k:9092").producer_kwargs()
    assert isinstance(idempotent.pop("partitioner"), KeyPartitioner)
    assert idempotent == {
        "bootstrap_servers": "k:9092",
        "security_protocol": "PLAINTEXT",
        "acks": "all",
        "enable_idempotence": True,
        "max_request_size": 1_048_576,
    }
    plain = KafkaConfig("k:9092", idempotent=False, client_id="inv").producer_kwargs()
    assert (plain["acks"], plain["enable_idempotence"], plain["client_id"]) == ("all", False, "inv")


def test_consumer_kwargs_and_secrets() -> None:
    config = KafkaConfig(
        "k:9092",
        security_protocol="SASL_SSL",
        sasl_mechanism="PLAIN",
        sasl_plain_username="u",
        sasl_plain_password="hunter2",
        session_timeout_ms=3000,
    )
    kwargs = config.consumer_kwargs()
    assert kwargs["sasl_plain_password"] == "hunter2"
    assert kwargs["session_timeout_ms"] == 3000
    assert "enable_idempotence" not in kwargs
    assert "hunter2" not in repr(config)


# -- dead letters --------------------------------------------------------------------------


def test_dead_letter_headers() -> None:
    try:
        raise ValueError("bad payload")
    except ValueError as exc:
        error = exc
    original = {
        Header.ID: "m-1",
        DeadLetterHeader.REASON: "old reason",
        DeadLetterHeader.REPLAY_COUNT: "2",
    }
    headers = dead_letter_headers(
        original,
        topic="inventory.commands",
        partition=3,
        offset=42,
        timestamp=1_700_000_000_000,
        group="inventory-service",
        exc=error,
        reason="schema",
    )
    assert headers[Header.ID] == "m-1"
    assert headers[DeadLetterHeader.REPLAY_COUNT] == "2"
    assert headers[DeadLetterHeader.REASON] == "schema"
    assert headers[DeadLetterHeader.ORIGINAL_TOPIC] == "inventory.commands"
    assert headers[DeadLetterHeader.ORIGINAL_PARTITION] == "3"
    assert headers[DeadLetterHeader.ORIGINAL_OFFSET] == "42"
    assert headers[DeadLetterHeader.ORIGINAL_TIMESTAMP] == "1700000000000"
    assert headers[DeadLetterHeader.ORIGINAL_CONSUMER_GROUP] == "inventory-service"
    assert headers[DeadLetterHeader.EXCEPTION_FQCN] == "builtins.ValueError"
    assert headers[DeadLetterHeader.EXCEPTION_MESSAGE] == "bad payload"
    assert "test_dead_letter_headers" in headers[DeadLetterHeader.EXCEPTION_STACKTRACE]
    assert headers[DeadLetterHeader.DEAD_LETTER_ID]
    assert original[DeadLetterHeader.REASON] == "old reason"  # the input is not modified


def test_dead_letter_headers_without_group_timestamp_or_traceback() -> None:
    headers = dead_letter_headers({}, "t", 0, 0, None, None, RuntimeError("x" * 5000), "x")
    assert DeadLetterHeader.ORIGINAL_TIMESTAMP not in headers
    assert DeadLetterHeader.ORIGINAL_CONSUMER_GROUP not in headers
    assert DeadLetterHeader.EXCEPTION_STACKTRACE not in headers
    assert len(headers[DeadLetterHeader.EXCEPTION_MESSAGE]) <= 2000


# -- the public API ------------------------------------------------------------------------


def test_runtime_names_are_exported() -> None:
    runtime = {
        "Deferred",
        "HandlerContext",
        "HandlerResult",
        "KafkaConfig",
        "RunnerObserver",
        "Service",
        "ServiceRunner",
        "dead_letter_headers",
    }
    assert runtime <= set(service_sdk.__all__)
    for name in service_sdk.__all__:
        assert hasattr(service_sdk, name), name


def test_envelope_round_trip_keeps_the_command() -> None:
    envelope = command_envelope(Ping(text="x"), command_id="c1")
    assert Envelope.model_validate_json(envelope.to_bytes()) == envelope
