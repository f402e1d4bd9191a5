"""The AsyncAPI 3.0 document of the wire contract, generated from the registered definitions.

Every topic and every message the coordinator and its participants exchange: the commands of
each registered saga's steps (all versions) and their compensations, the fence, the replies
with the JSON Schema of each command's ``reply_model`` (and the end notices of child sagas,
which reach their parent as replies), the start requests with each saga type's data model,
the signals with the payload model of each wait, the lifecycle events, and the dead letters
with their headers. The JSON
Schemas come from the pydantic models themselves, so the document cannot drift from the code;
``docs/asyncapi.yaml`` is this document for :func:`saga_defs.default_registry`, kept in sync by
a unit test (``saga contract --asyncapi > docs/asyncapi.yaml``).

Operations are written from the coordinator's point of view (it sends commands and events,
receives replies and start requests); a participant does the opposite on the same channels.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from coordinator.core.definition import SagaRegistry, WaitForSignal
from coordinator.core.state import LifecycleKind
from service_sdk.contract import (
    FENCE_MESSAGE_TYPE,
    Command,
    DeadLetterHeader,
    DeadLetterReason,
    Envelope,
    Header,
    SignalEnvelope,
)

__all__ = ["asyncapi_document", "message_key", "render_asyncapi"]

_REF = "#/components/schemas/{model}"

_HEADER_DOCS = {
    Header.ID: "The message id (= body message_id).",
    Header.TYPE: "The message type (= body message_type).",
    Header.SOURCE: "The producing service or process.",
    Header.SPEC_VERSION: "The envelope's spec version, 1.0.",
    Header.TIME: "When the message was produced, ISO 8601 with offset.",
    Header.CONTENT_TYPE: "Always application/json.",
    Header.KIND: "command, reply, start or event.",
    Header.SAGA_ID: "The saga id (= the record key).",
    Header.SAGA_TYPE: "The saga type.",
    Header.STEP: "The forward step's name (also on its compensation's messages).",
    Header.ATTEMPT: "The attempt, as a decimal string (1, 2, ...).",
    Header.COMMAND_ID: "The command id (a reply carries the id of the command it answers).",
    Header.REPLY_TO: "The topic to publish the reply to (commands only).",
    Header.COMPENSATES: "The forward command id a compensation or fence undoes.",
    Header.OUTCOME: "success, failure or retryable (replies only).",
    Header.SIGNAL: "The signal's name (signals only).",
    Header.TRACEPARENT: "W3C trace context.",
}

_DEAD_LETTER_DOCS = {
    DeadLetterHeader.ORIGINAL_TOPIC: "The topic the record was read from.",
    DeadLetterHeader.ORIGINAL_PARTITION: "Its partition (decimal).",
    DeadLetterHeader.ORIGINAL_OFFSET: "Its offset (decimal).",
    DeadLetterHeader.ORIGINAL_TIMESTAMP: "Its timestamp, epoch milliseconds (decimal).",
    DeadLetterHeader.ORIGINAL_CONSUMER_GROUP: "The consumer group that gave up on it.",
    DeadLetterHeader.EXCEPTION_FQCN: "The exception's fully qualified class name.",
    DeadLetterHeader.EXCEPTION_MESSAGE: "What went wrong, for people.",
    DeadLetterHeader.EXCEPTION_STACKTRACE: "The stack trace, when there is one.",
    DeadLetterHeader.REASON: "Why, machine-readable: one of the reasons listed.",
    DeadLetterHeader.REPLAY_COUNT: "How often the record was replayed already.",
    DeadLetterHeader.DEAD_LETTER_ID: "The dead letter's own id.",
    DeadLetterHeader.VALUE_DROPPED: "Set to the body's size when the body was too large to keep.",
}


def message_key(kind: str, message_type: str) -> str:
    """The ``components.messages`` key of a message: ``<kind>.<message_type>`` with dots as
    underscores (``command.inventory_reserve_stock``); what a validator looks a record up by."""
    return f"{kind}.{message_type}".replace(".", "_").replace("-", "_")


def _headers_schema(names: Iterable[str], docs: dict[str, str]) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    for name in names:
        prop: dict[str, Any] = {"type": "string", "description": docs.get(name, "")}
        if name == Header.ATTEMPT:
            prop["pattern"] = "^[1-9][0-9]*$"
        properties[name] = prop
    # Headers repeat the body's routing facts as UTF-8 strings; a null one is omitted. They
    # are optional: the body is what the coordinator and the SDK read.
    return {"type": "object", "properties": properties, "additionalProperties": True}


def _envelope_of(
    kind: str, message_type: str, payload: dict[str, Any], required: Iterable[str]
) -> dict[str, Any]:
    return {
        "allOf": [
            {"$ref": _REF.format(model="Envelope")},
            {
                "type": "object",
                "properties": {
                    "kind": {"const": kind},
                    "message_type": {"const": message_type},
                    "payload": payload,
                },
                "required": ["kind", "message_type", "saga_id", "saga_type", *required],
            },
        ]
    }


def _ref(model: type[BaseModel]) -> dict[str, Any]:
    return {"$ref": _REF.format(model=model.__name__)}


def _reply_payload(command: type[Command]) -> dict[str, Any]:
    reply = command.reply_model
    success: dict[str, Any] = _ref(reply) if reply is not None else {"type": "object"}
    if command.message_type == FENCE_MESSAGE_TYPE:
        success = {
            "type": "object",
            "properties": {"fenced": {"type": "boolean"}, "executed": {"type": "string"}},
            "required": ["fenced"],
        }
    return success


def asyncapi_document(registry: SagaRegistry, *, version: str = "1.0.0") -> dict[str, Any]:
    """The AsyncAPI 3.0 document of ``registry``'s sagas and the wire contract."""
    commands: dict[str, dict[str, type[Command]]] = {}
    for definition in registry:
        for step in definition.command_steps():
            found = commands.setdefault(step.service, {})
            found[step.command.message_type] = step.command
            if step.compensation is not None:
                found[step.compensation.command.message_type] = step.compensation.command
    models: dict[str, type[BaseModel]] = {"Envelope": Envelope, "SignalEnvelope": SignalEnvelope}
    waits: dict[str, type[BaseModel] | None] = {}
    children: set[str] = set()
    for definition in registry:
        children.update(definition.child_types())
        for unit in definition.units():
            if not isinstance(unit, WaitForSignal):
                continue
            if unit.signal in waits and waits[unit.signal] is not unit.payload_model:
                waits[unit.signal] = None  # waits differ on the payload: it stays open
            else:
                waits[unit.signal] = unit.payload_model
    for wait_model in waits.values():
        if wait_model is not None:
            models[wait_model.__name__] = wait_model
    for by_type in commands.values():
        for command in by_type.values():
            models[command.__name__] = command
            if command.reply_model is not None:
                models[command.reply_model.__name__] = command.reply_model
    for name in registry.names():
        data_model = registry.get(name).data_model
        models[data_model.__name__] = data_model
    _, top = models_json_schema(
        [(model, "validation") for model in models.values()], ref_template=_REF
    )
    schemas: dict[str, Any] = dict(sorted(top.get("$defs", {}).items()))

    messages: dict[str, Any] = {}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    schemas["RoutingHeaders"] = _headers_schema(_HEADER_DOCS, _HEADER_DOCS)
    headers = {"$ref": _REF.format(model="RoutingHeaders")}
    prefix = {"prefix": {"description": "The deployment's topic prefix (may be empty)."}}

    def message(key: str, title: str, summary: str, payload: dict[str, Any]) -> dict[str, Any]:
        messages[key] = {
            "name": key,
            "title": title,
            "summary": summary,
            "contentType": "application/json",
            "headers": headers,
            "payload": payload,
        }
        return {"$ref": f"#/components/messages/{key}"}

    replies: dict[str, Any] = {}
    for service in sorted(commands):
        by_type = dict(sorted(commands[service].items()))
        by_type[FENCE_MESSAGE_TYPE] = Command  # any service may be sent a fence
        channel_messages: dict[str, Any] = {}
        for message_type, command in by_type.items():
            fence = message_type == FENCE_MESSAGE_TYPE
            payload = {"type": "object"} if fence else _ref(command)
            required = ["step", "command_id", "reply_to"] + (["compensates"] if fence else [])
            summary = (
                "Undo a step without a compensation: refuse the command named in "
                "`compensates` for good if it has not run."
                if fence
                else (command.__doc__ or "").strip().splitlines()[0]
            )
            channel_messages[message_key("command", message_type)] = message(
                message_key("command", message_type),
                f"{message_type} command",
                summary,
                _envelope_of("command", message_type, payload, required),
            )
            key = message_key("reply", message_type)
            if key not in messages:
                replies[key] = message(
                    key,
                    f"reply to {message_type}",
                    "The participant's answer; a success carries the reply model as payload.",
                    {
                        "allOf": [
                            _envelope_of(
                                "reply",
                                message_type,
                                {"type": "object"},
                                ["step", "command_id", "outcome"],
                            ),
                            {
                                "if": {
                                    "properties": {"outcome": {"const": "success"}},
                                    "required": ["outcome"],
                                },
                                "then": {"properties": {"payload": _reply_payload(command)}},
                            },
                        ]
                    },
                )
        channel = f"commands_{service}".replace("-", "_")
        channels[channel] = {
            "address": "{prefix}" + f"{service}.commands",
            "title": f"Commands to {service}",
            "description": "Keyed by saga id. The participant answers on the command's reply_to.",
            "parameters": prefix,
            "messages": channel_messages,
        }
        operations[f"send_{channel}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{channel}"},
            "summary": f"The coordinator sends {service}'s commands, compensations and fences.",
        }

    for child in sorted(children):
        # A child saga's end reaches its parent as a reply to the child's "start command".
        key = message_key("reply", f"{child}.start")
        replies[key] = message(
            key,
            f"end of a {child} child saga",
            f"A {child} saga started as a child step announces its end to the parent: "
            "command_id is the child's saga id; success (COMPLETED) carries its final data, "
            "failure (COMPENSATED or FAILED) its failure reason in error.",
            {
                "allOf": [
                    _envelope_of(
                        "reply",
                        f"{child}.start",
                        {"type": "object"},
                        ["step", "command_id", "outcome"],
                    ),
                    {
                        "if": {
                            "properties": {"outcome": {"const": "success"}},
                            "required": ["outcome"],
                        },
                        "then": {"properties": {"payload": _ref(registry.get(child).data_model)}},
                    },
                ]
            },
        )
    signals: dict[str, Any] = {
        "signal": message(
            "signal",
            "signal",
            "A named signal for one saga (any name). A saga waiting for it takes it; an active "
            "saga whose wait for it lies ahead keeps it until the wait begins; otherwise it is "
            "dead-lettered (signal_not_awaited, signal_invalid, saga_terminal, unknown_saga).",
            _ref(SignalEnvelope),
        )
    }
    for signal_name, wait_model in sorted(waits.items()):
        key = message_key("signal", signal_name)
        signals[key] = message(
            key,
            f"{signal_name} signal",
            f"The {signal_name} signal a WaitForSignal step waits for.",
            {
                "allOf": [
                    _ref(SignalEnvelope),
                    {
                        "type": "object",
                        "properties": {
                            "name": {"const": signal_name},
                            "payload": _ref(wait_model)
                            if wait_model is not None
                            else {"type": "object"},
                        },
                    },
                ]
            },
        )
    starts: dict[str, Any] = {}
    for name in registry.names():
        definition = registry.get(name)
        key = message_key("start", f"{name}.start")
        starts[key] = message(
            key,
            f"start a {name} saga",
            f"Start a {name} saga (version {definition.version} for new sagas); the saga id is "
            "the record key and the body's saga_id. Repeating a start with the same data is a "
            "no-op; other data is dead-lettered as conflicting_start.",
            _envelope_of("start", f"{name}.start", _ref(definition.data_model), []),
        )
    events: dict[str, Any] = {}
    for kind in LifecycleKind:
        key = message_key("event", kind.value)
        events[key] = message(
            key,
            f"{kind.value} event",
            "A saga lifecycle event.",
            _envelope_of("event", kind.value, {"type": "object"}, []),
        )
    channels["replies"] = {
        "address": "{prefix}saga.replies",
        "title": "Replies from participants",
        "description": "Keyed by saga id. A reply is matched by its step and command_id (a "
        "compensation's reply carries the forward step's name); its attempt must not be "
        "newer than the last send.",
        "parameters": prefix,
        "messages": replies,
    }
    channels["requests"] = {
        "address": "{prefix}saga.requests",
        "title": "Requests to start a saga",
        "parameters": prefix,
        "messages": starts,
    }
    channels["signals"] = {
        "address": "{prefix}saga.signals",
        "title": "Signals for sagas",
        "description": "Keyed by saga id. Also sent by POST /sagas/{id}/signals/{name} and "
        "`saga signal`. The inbox de-duplicates on message_id.",
        "parameters": prefix,
        "messages": signals,
    }
    channels["events"] = {
        "address": "{prefix}saga.events",
        "title": "Saga lifecycle events",
        "parameters": prefix,
        "messages": events,
    }
    messages["dead_letter"] = {
        "name": "dead_letter",
        "title": "dead letter",
        "summary": "The original record's bytes (key and headers kept), with the dead-letter "
        "headers added. Reasons: " + ", ".join(r.value for r in DeadLetterReason) + ".",
        "headers": _headers_schema([*_DEAD_LETTER_DOCS, *_HEADER_DOCS], _DEAD_LETTER_DOCS)
        | {"required": [DeadLetterHeader.REASON, DeadLetterHeader.ORIGINAL_TOPIC]},
        "payload": {},
    }
    messages["dead_letter"]["headers"]["properties"][DeadLetterHeader.REASON]["enum"] = [
        r.value for r in DeadLetterReason
    ]
    channels["dead_letters"] = {
        "address": "{topic}.dlq",
        "title": "Dead letters of a topic",
        "description": "What a consumer could not process; listed, inspected and replayed with "
        "`saga dlq`.",
        "parameters": {"topic": {"description": "The topic the record came from."}},
        "messages": {"dead_letter": {"$ref": "#/components/messages/dead_letter"}},
    }
    operations["receive_replies"] = {
        "action": "receive",
        "channel": {"$ref": "#/channels/replies"},
        "summary": "The coordinator applies replies to the sagas they belong to.",
    }
    operations["receive_requests"] = {
        "action": "receive",
        "channel": {"$ref": "#/channels/requests"},
        "summary": "The coordinator starts sagas.",
    }
    operations["receive_signals"] = {
        "action": "receive",
        "channel": {"$ref": "#/channels/signals"},
        "summary": "The coordinator applies signals to the sagas they are for.",
    }
    operations["send_events"] = {
        "action": "send",
        "channel": {"$ref": "#/channels/events"},
        "summary": "The coordinator publishes lifecycle events.",
    }
    operations["send_dead_letters"] = {
        "action": "send",
        "channel": {"$ref": "#/channels/dead_letters"},
        "summary": "Coordinator and participants dead-letter what they cannot process.",
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Saga coordinator wire contract",
            "version": version,
            "description": "Topics and messages of the saga coordinator and its participants. "
            "Bodies are UTF-8 JSON envelopes; the record key is the saga id. Unknown fields "
            "are ignored (tolerant reader); required fields stay required. Operations are "
            "the coordinator's; participants receive commands and send replies.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"schemas": schemas, "messages": dict(sorted(messages.items()))},
    }


class _NoAliases(yaml.SafeDumper):
    """Writes repeated parts (the headers schema) in full: a contract is read by people."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render_asyncapi(registry: SagaRegistry) -> str:
    """:func:`asyncapi_document` as YAML, keys in the order they were written."""
    return yaml.dump(
        asyncapi_document(registry),
        Dumper=_NoAliases,
        sort_keys=False,
        allow_unicode=True,
        width=100,
    )
