"""``saga contract``: the machine-readable wire contract of the sagas this coordinator runs."""

from __future__ import annotations

from typing import Annotated

import typer

from coordinator.cli.common import fail, registry_from, settings_from
from coordinator.ops.asyncapi import render_asyncapi

__all__ = ["contract"]


def contract(
    asyncapi: Annotated[
        bool,
        typer.Option("--asyncapi", help="Print the AsyncAPI 3.0 document (YAML)"),
    ] = False,
) -> None:
    """Print the wire contract of the registered sagas (SAGA_REGISTRY): every topic, every
    message and its JSON Schema. `saga contract --asyncapi > docs/asyncapi.yaml`."""
    if not asyncapi:
        fail("say which format: --asyncapi")
    typer.echo(render_asyncapi(registry_from(settings_from())), nl=False)
