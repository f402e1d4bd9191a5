"""A participant written from the wire contract alone: plain aiokafka and JSON, no SDK.

It deliberately imports nothing from ``service_sdk`` or ``coordinator``: it is what a team
writing a participant in another language builds from the README's wire contract and
``docs/asyncapi.yaml``. It reads ``<prefix><service>.commands``, answers each command on its
``reply_to`` topic (keyed by saga id, the routing facts repeated as UTF-8 headers), records
its final answer per command id so a re-sent command is answered from the record instead of
acting twice, and honours fences (``saga.fence``: refuse the named command for good if it has
not run yet).

A handler receives the command's ``message_type`` and ``payload`` and returns a
:class:`Answer`. The participant keeps a log of what it did (:attr:`PlainParticipant.log`)
so tests can check the ledger: which command ran, how often, and for which saga.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

__all__ = ["Answer", "Executed", "PlainParticipant"]

FENCE = "saga.fence"


@dataclass(frozen=True)
class Answer:
    """What a handler answers: ``success``, ``failure`` (a decline) or ``retryable``."""

    outcome: str = "success"
    payload: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    final: bool = True
    """False for a transient answer (``retryable``): not recorded, the re-send runs again."""


@dataclass(frozen=True)
class Executed:
    """One command the participant acted on (a re-send answered from the record is not)."""

    saga_id: str
    step: str
    message_type: str
    command_id: str
    attempt: int
    outcome: str


Handler = Callable[[str, dict[str, Any]], Answer]


def _headers(body: dict[str, Any]) -> list[tuple[str, bytes]]:
    """The routing headers of the contract: UTF-8 strings, attempt in decimal, none if null."""
    names = {
        "ce_id": body["message_id"],
        "ce_type": body["message_type"],
        "ce_source": body["source"],
        "ce_specversion": "1.0",
        "ce_time": body["occurred_at"],
        "content-type": "application/json",
        "ce_sagakind": "reply",
        "ce_sagaid": body["saga_id"],
        "ce_sagatype": body["saga_type"],
        "ce_sagastep": body.get("step"),
        "ce_sagaattempt": str(body["attempt"]),
        "ce_sagacommandid": body.get("command_id"),
        "ce_sagaoutcome": body["outcome"],
        "traceparent": body.get("traceparent"),
    }
    return [(k, v.encode()) for k, v in names.items() if v is not None]


class PlainParticipant:
    """Serves the commands of some services with plain aiokafka until stopped.

    Args:
        bootstrap: Kafka bootstrap servers.
        prefix: The topic prefix (``""`` for none).
        handlers: The handler of each service, by service name.
        group: The consumer group; one per participant deployment.
        duplicate_replies: Publish every reply twice (two message ids), as a participant
            that re-publishes after a crash does.
        extra_reply_fields: Fields added to every reply envelope (a newer participant's
            additions, which the coordinator must ignore).
    """

    def __init__(
        self,
        bootstrap: str,
        prefix: str,
        handlers: dict[str, Handler],
        *,
        group: str | None = None,
        duplicate_replies: bool = False,
        extra_reply_fields: dict[str, Any] | None = None,
        producer_settings: dict[str, Any] | None = None,
    ) -> None:
        self._bootstrap = bootstrap
        self._prefix = prefix
        self._handlers = handlers
        self._group = group or f"{prefix}plain-{'-'.join(sorted(handlers))}"
        self._duplicate = duplicate_replies
        self._extra = dict(extra_reply_fields or {})
        self._producer_settings = producer_settings or {"bootstrap_servers": bootstrap}
        self._answers: dict[str, Answer] = {}
        self._tombstones: set[str] = set()
        self.log: list[Executed] = []
        self.replies_sent = 0
        self._task: asyncio.Task[None] | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None

    def topics(self) -> Sequence[str]:
        """The command topics this participant reads."""
        return [f"{self._prefix}{service}.commands" for service in sorted(self._handlers)]

    async def __aenter__(self) -> PlainParticipant:
        self._producer = AIOKafkaProducer(**self._producer_settings)
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(
            *self.topics(),
            bootstrap_servers=self._bootstrap,
            group_id=self._group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await self._consumer.start()
        self._task = asyncio.create_task(self._run(), name=f"plain-participant-{self._group}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            batch = await self._consumer.getmany(timeout_ms=200, max_records=200)
            for records in batch.values():
                for record in records:
                    await self._handle(json.loads(record.value))
            if batch:
                await self._consumer.commit()

    async def _handle(self, command: dict[str, Any]) -> None:
        command_id = command["command_id"]
        if command["message_type"] == FENCE:
            undone = command.get("compensates")
            ran = undone in self._answers
            if undone and not ran:
                self._tombstones.add(undone)
            payload = {"fenced": True} if not ran else {"fenced": False, "executed": "success"}
            await self._reply(command, Answer("success", payload))
            return
        recorded = self._answers.get(command_id)
        if recorded is None and command_id in self._tombstones:
            recorded = Answer("failure", error="fenced: the saga gave up on this command")
        if recorded is None:
            service = command["message_type"].split(".", 1)[0]
            handler = self._handlers[service]
            recorded = handler(command["message_type"], command.get("payload", {}))
            self.log.append(
                Executed(
                    command["saga_id"],
                    command["step"],
                    command["message_type"],
                    command_id,
                    command["attempt"],
                    recorded.outcome,
                )
            )
            if recorded.final:
                self._answers[command_id] = recorded
        await self._reply(command, recorded)

    async def _reply(self, command: dict[str, Any], answer: Answer) -> None:
        assert self._producer is not None
        copies = 2 if self._duplicate else 1
        for _ in range(copies):
            body: dict[str, Any] = {
                "message_id": str(uuid.uuid4()),
                "kind": "reply",
                "message_type": command["message_type"],
                "source": "plain-participant",
                "saga_id": command["saga_id"],
                "saga_type": command["saga_type"],
                "step": command["step"],
                "attempt": command["attempt"],
                "command_id": command["command_id"],
                "outcome": answer.outcome,
                "error": answer.error,
                "payload": answer.payload,
                "occurred_at": datetime.now(UTC).isoformat(),
                "traceparent": command.get("traceparent"),
                **self._extra,
            }
            topic = command.get("reply_to") or f"{self._prefix}saga.replies"
            await self._producer.send_and_wait(
                topic,
                json.dumps(body).encode(),
                key=command["saga_id"].encode(),
                headers=_headers(body),
            )
            self.replies_sent += 1

    def executed(self, message_type: str | None = None) -> list[Executed]:
        """What the participant acted on, optionally of one message type."""
        return [e for e in self.log if message_type is None or e.message_type == message_type]
