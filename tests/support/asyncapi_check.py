"""Checks Kafka records against ``docs/asyncapi.yaml`` with ``jsonschema``.

A record is looked up the way a consumer written from the document would: its topic names
the channel (``{prefix}`` filled in), its body's ``kind`` and ``message_type`` name the
message, which must be one the channel lists; then the body is validated against the message's
payload schema and the headers against its headers schema.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator

__all__ = ["ASYNCAPI", "check_record", "load_document"]

ASYNCAPI = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.yaml"


@cache
def load_document() -> dict[str, Any]:
    """The committed AsyncAPI document."""
    document: dict[str, Any] = yaml.safe_load(ASYNCAPI.read_text())
    return document


def _resolve(document: dict[str, Any], ref: str) -> dict[str, Any]:
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return dict(node)


def _validate(document: dict[str, Any], schema: dict[str, Any], instance: Any) -> None:
    # The schema's $refs point into the document's components: give them that root.
    rooted = {**schema, "components": document["components"]}
    Draft202012Validator(rooted).validate(instance)


def _channel(document: dict[str, Any], topic: str, prefix: str) -> dict[str, Any]:
    for channel in document["channels"].values():
        address = channel["address"]
        if address == "{topic}.dlq" and topic.endswith(".dlq"):
            return dict(channel)
        if address.replace("{prefix}", prefix) == topic:
            return dict(channel)
    raise AssertionError(f"topic {topic!r} is no channel of the AsyncAPI document")


def check_record(
    topic: str,
    prefix: str,
    value: bytes,
    headers: dict[str, str],
    document: dict[str, Any] | None = None,
) -> str:
    """Validate one record against ``document`` (default: the committed one); returns the
    name of the message it is. Raises on a mismatch."""
    document = document if document is not None else load_document()
    channel = _channel(document, topic, prefix)
    names = {ref["$ref"].rsplit("/", 1)[1] for ref in channel["messages"].values()}
    if topic.endswith(".dlq"):
        (name,) = names
        message = document["components"]["messages"][name]
        _validate(document, message["headers"], headers)
        return str(name)
    body = json.loads(value)
    if body.get("kind") == "signal":
        named = f"signal_{body['name']}".replace(".", "_").replace("-", "_").replace(":", "_")
        name = named if named in names else "signal"
    else:
        name = f"{body['kind']}.{body['message_type']}".replace(".", "_").replace("-", "_")
    assert name in names, f"{name} is not a message of channel {channel['address']}"
    message = document["components"]["messages"][name]
    _validate(document, message["payload"], body)
    _validate(document, _resolve(document, message["headers"]["$ref"]), headers)
    return str(name)
