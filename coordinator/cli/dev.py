"""``saga dev``: a coordinator to explore on this machine, with its console, until Ctrl-C."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from coordinator.cli.demo import stop_on_signals
from coordinator.cli.options import VerboseOpt

__all__ = ["dev"]


def dev(
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="Where PostgreSQL's data and the token are kept across restarts "
            "[default: ~/.local/share/saga-dev; as root /var/lib/saga-dev]",
        ),
    ] = None,
    port: Annotated[
        int, typer.Option(min=1, max=65_535, help="The HTTP API and console port")
    ] = 8080,
    orders: Annotated[
        int, typer.Option(min=0, help="Demo orders to submit once it runs (0: none)")
    ] = 20,
    rate: Annotated[float, typer.Option(min=0.01, help="Their pace, orders per second")] = 1.0,
    fail_rate: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Fraction of orders whose payment is declined")
    ] = 0.1,
    verbose: VerboseOpt = False,
) -> None:
    """Run a local coordinator with its console, the example participants and a trickle of
    demo orders, until Ctrl-C. Prints the console URL, the token and the environment the
    CLI needs; sagas stay in --data-dir for the next run (Kafka is in memory)."""
    from coordinator.demo.dev_server import DEFAULT_DATA_DIR, DevOptions, run_dev

    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, stream=sys.stderr)
    options = DevOptions(
        data_dir=(data_dir or DEFAULT_DATA_DIR).expanduser().resolve(),
        port=port,
        orders=orders,
        rate=rate,
        fail_rate=fail_rate,
    )

    async def work() -> None:
        stop = asyncio.Event()
        stop_on_signals(stop)
        await run_dev(options, stop, Console())

    asyncio.run(work())
