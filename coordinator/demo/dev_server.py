"""``saga dev``: a local coordinator to explore, kept running until Ctrl-C.

The embedded broker (memory only) and a PostgreSQL whose data directory survives restarts,
one coordinator process serving the HTTP API and the console on a fixed port, the three
example participants, and optionally a trickle of demo orders. :func:`print_access` tells
where the console is, the token, and what to export for the CLI; ``saga demo --keep`` ends
with the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from rich.console import Console

from coordinator.config import Settings
from coordinator.demo.processes import ChildProcess
from coordinator.demo.runner import DemoCluster, DemoOptions, Infrastructure

__all__ = [
    "DevOptions",
    "dev_token",
    "http_environment",
    "print_access",
    "run_dev",
    "serve_until_stopped",
]

# As root, PostgreSQL runs as another account, which cannot enter /root.
DEFAULT_DATA_DIR = (
    Path("/var/lib/saga-dev") if os.geteuid() == 0 else Path.home() / ".local/share/saga-dev"
)


@dataclass(frozen=True)
class DevOptions:
    """What ``saga dev`` runs.

    Attributes:
        data_dir: PostgreSQL's cluster and the console token live here, across restarts.
        port: The HTTP API and console port on 127.0.0.1.
        orders: Demo orders to submit once everything runs (0: none).
        rate: Their pace, orders per second.
        fail_rate: The fraction of them whose payment is declined (they compensate).
    """

    data_dir: Path = DEFAULT_DATA_DIR
    port: int = 8080
    orders: int = 20
    rate: float = 1.0
    fail_rate: float = 0.1


def dev_token(data_dir: Path) -> str:
    """The console and API token kept in ``data_dir`` (made on first use, readable by you)."""
    path = data_dir / "token"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(18)
    path.touch(mode=0o600)
    path.write_text(token + "\n")
    return token


def http_environment(port: int, token: str) -> tuple[tuple[str, str], ...]:
    """The environment that makes a demo coordinator serve the API and console on ``port``."""
    return (("SAGA_HTTP__PORT", str(port)), ("SAGA_HTTP__TOKEN", token))


def print_access(
    console: Console, settings: Settings, port: int, token: str, *, data_dir: Path | None
) -> None:
    """Say where the console is, the token, and the environment for ``saga list`` & co."""
    console.print()
    console.print(f"[bold]Console[/bold]  http://127.0.0.1:{port}/ui   (sign in with the token)")
    console.print(f"[bold]API[/bold]      http://127.0.0.1:{port}/docs")
    console.print(f"[bold]Token[/bold]    {token}")
    console.print("[bold]For the CLI[/bold] (saga list, saga show, saga dlq list):")
    exports = {
        "SAGA_DATABASE__URL": settings.database.url,
        "SAGA_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "SAGA_KAFKA__IDEMPOTENT": "true" if settings.kafka.idempotent else "false",
        "SAGA_HTTP__TOKEN": token,
    }
    for name, value in exports.items():
        console.print(f"  export {name}={value}", soft_wrap=True, highlight=False)
    where = f"; data kept in {data_dir}" if data_dir is not None else "; nothing is kept"
    console.print(f"Running until Ctrl-C{where}.")


class _Cluster(Protocol):
    """What :func:`serve_until_stopped` watches: the demo's processes and its console."""

    @property
    def children(self) -> Sequence[ChildProcess]: ...

    @property
    def console(self) -> Console: ...


async def serve_until_stopped(cluster: _Cluster, stop: asyncio.Event) -> None:
    """Wait for ``stop`` (Ctrl-C); say so if a process dies meanwhile."""
    reported: set[str] = set()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
        for child in cluster.children:
            if child.returncode is not None and child.name not in reported:
                reported.add(child.name)
                cluster.console.print(f"[red]{child.name} exited[/red]:\n{child.log_tail()}")


async def run_dev(options: DevOptions, stop: asyncio.Event, console: Console) -> None:
    """Start everything, print how to reach it, submit the orders, run until ``stop``."""
    from coordinator.devstack import EmbeddedKafka, PostgresBinaries, PrerequisiteMissingError
    from coordinator.devstack.persistent_postgres import PersistentPostgres

    token = dev_token(options.data_dir)
    async with contextlib.AsyncExitStack() as stack:
        console.log("starting the embedded Kafka-compatible broker (Tansu, memory only)")
        kafka = await stack.enter_async_context(EmbeddedKafka())
        try:
            binaries = PostgresBinaries.find("embedded")
        except PrerequisiteMissingError:
            binaries = PostgresBinaries.find("debian")
        postgres = PersistentPostgres(options.data_dir / "postgres", binaries)
        console.log(
            f"starting PostgreSQL on {postgres.directory}"
            + (" (existing data)" if postgres.initialized else " (new cluster)")
        )
        await stack.enter_async_context(postgres)
        infra = Infrastructure(
            kafka.bootstrap_servers, kafka.supports_idempotence, postgres.url, "embedded"
        )
        demo = DemoOptions(
            orders=max(options.orders, 1),
            fail_rate=options.fail_rate,
            rate=options.rate,
            environment=http_environment(options.port, token),
        )
        cluster = DemoCluster(demo, infra, console)
        stack.push_async_callback(cluster.close)
        console.log("migrating, seeding the participants and creating topics")
        await cluster.prepare()
        await cluster.start()
        console.log(f"started {len(cluster.children)} processes (logs in {cluster.log_dir})")
        await cluster.wait_ready()
        print_access(console, cluster.settings, options.port, token, data_dir=options.data_dir)
        if options.orders:
            console.log(f"submitting {options.orders} demo orders at {options.rate:g}/s")
            submitting = asyncio.create_task(cluster.submit())
            stack.callback(submitting.cancel)
        await serve_until_stopped(cluster, stop)
        console.log("stopping")
