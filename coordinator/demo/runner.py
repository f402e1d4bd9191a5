"""``saga demo``: the order saga end to end, on real Kafka and PostgreSQL, measured."""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from aiokafka import AIOKafkaProducer
from coordinator.demo.ledger import check_ledger
from coordinator.demo.participants import PARTICIPANTS, inventory, payment
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.app import Coordinator
from coordinator.client import start_request
from coordinator.config import DatabaseSettings, KafkaSettings, Settings
from coordinator.database import create_engine
from coordinator.demo.processes import ChildProcess, child_env
from coordinator.kafka import ensure_topics, producer_kwargs
from coordinator.migrate import upgrade_database
from saga_defs import OrderData, default_registry
from saga_defs.order import OrderItem
from service_sdk import Topics, encode_headers

__all__ = ["DemoOptions", "DemoSummary", "Infrastructure", "run_demo"]

TERMINAL = ("COMPLETED", "COMPENSATED", "FAILED")


@dataclass(frozen=True)
class DemoOptions:
    """What the demo runs against and how much load it submits."""

    orders: int = 100
    fail_rate: float = 0.1
    bootstrap_servers: str | None = None
    database_url: str | None = None
    idempotent: bool | None = None
    timeout_s: float = 300.0
    seed: int = 7
    quiet: bool = False
    coordinators: int = 1


@dataclass
class DemoSummary:
    """The demo's result; :meth:`as_dict` is the ``--json`` line."""

    orders: int
    completed: int
    compensated: int
    failed: int
    stuck: int
    wall_s: float
    sagas_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    ledger_ok: bool
    broker: str = ""
    ledger_problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every saga ended COMPLETED or COMPENSATED and the ledger adds up."""
        return self.failed == 0 and self.stuck == 0 and self.ledger_ok

    def as_dict(self) -> dict[str, Any]:
        """The JSON summary."""
        result = asdict(self)
        result.pop("ledger_problems")
        return result


@dataclass(frozen=True)
class Infrastructure:
    """Where the demo's Kafka and PostgreSQL are."""

    bootstrap_servers: str
    idempotent: bool
    database_url: str
    broker: str


@contextlib.asynccontextmanager
async def infrastructure(options: DemoOptions, console: Console) -> AsyncIterator[Infrastructure]:
    """The given Kafka and PostgreSQL, or embedded ones started (and removed) here."""
    from coordinator.devstack import EmbeddedKafka, start_postgres

    async with contextlib.AsyncExitStack() as stack:
        bootstrap = options.bootstrap_servers
        idempotent = bool(options.idempotent) if options.idempotent is not None else True
        broker = "external"
        if bootstrap is None:
            console.log("starting the embedded Kafka-compatible broker (Tansu, memory only)")
            kafka = await stack.enter_async_context(EmbeddedKafka())
            bootstrap = kafka.bootstrap_servers
            idempotent = kafka.supports_idempotence
            broker = "embedded"
        database_url = options.database_url
        if database_url is None:
            console.log("starting an embedded PostgreSQL")
            postgres = await stack.enter_async_context(start_postgres())
            database_url = postgres.url
        yield Infrastructure(bootstrap, idempotent, database_url, broker)


@dataclass(frozen=True)
class _Plan:
    orders: list[OrderData]
    declined_customers: set[str]
    stock: dict[str, int]


def _plan(options: DemoOptions) -> _Plan:
    rng = random.Random(options.seed)
    run = uuid.uuid4().hex[:8]
    skus = [f"{run}-sku-{i:02d}" for i in range(20)]
    declined = round(options.orders * options.fail_rate)
    declined_at = set(rng.sample(range(options.orders), declined))
    orders: list[OrderData] = []
    declined_customers: set[str] = set()
    for index in range(options.orders):
        customer = f"{run}-customer-{index % 50:02d}"
        if index in declined_at:
            customer = f"{run}-declined-{index}"
            declined_customers.add(customer)
        items = tuple(
            OrderItem(sku=sku, quantity=rng.randint(1, 3))
            for sku in rng.sample(skus, rng.randint(1, 3))
        )
        orders.append(
            OrderData(
                order_id=f"{run}-order-{index:06d}",
                customer_id=customer,
                items=items,
                amount_cents=rng.randint(500, 50_000),
            )
        )
    return _Plan(orders, declined_customers, {sku: 1_000_000 for sku in skus})


async def _prepare(engine: AsyncEngine, plan: _Plan) -> None:
    async with engine.begin() as conn:
        for module in PARTICIPANTS.values():
            await module.install(conn)
        await inventory.seed(conn, plan.stock)
        customers = {o.customer_id: "ok" for o in plan.orders}
        customers.update({c: "declined" for c in plan.declined_customers})
        await payment.seed(conn, customers)


async def _statuses(engine: AsyncEngine, ids: list[str]) -> dict[str, tuple[str, datetime | None]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT saga_id, status, completed_at FROM saga.saga_instance "
                "WHERE saga_id = ANY(:ids)"
            ),
            {"ids": ids},
        )
        return {row.saga_id: (row.status, row.completed_at) for row in rows}


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


async def run_demo(options: DemoOptions) -> DemoSummary:
    """Run the demo and return its summary (also printed unless ``options.quiet``)."""
    console = Console(stderr=options.quiet, quiet=False)
    plan = _plan(options)
    async with infrastructure(options, console) as infra:
        settings = Settings(
            kafka=KafkaSettings(
                bootstrap_servers=infra.bootstrap_servers, idempotent=infra.idempotent
            ),
            database=DatabaseSettings(url=infra.database_url),
        )
        console.log("migrating the coordinator's schema and seeding the participants")
        await upgrade_database(settings.database.url)
        engine = create_engine(settings.database.url, pool_size=2)
        children: list[ChildProcess] = []
        try:
            await _prepare(engine, plan)
            await ensure_topics(
                infra.bootstrap_servers, Coordinator(settings, default_registry()).topic_plan()
            )
            log_dir = Path(tempfile.mkdtemp(prefix="saga-demo-"))
            env = child_env(settings)
            names = [f"coordinator-{i}" for i in range(options.coordinators)]
            children = [ChildProcess(n, ["run"], env, log_dir) for n in names]
            children += [
                ChildProcess(name, ["participant", name], env, log_dir) for name in PARTICIPANTS
            ]
            for child in children:
                await child.start()
            console.log(f"started {len(children)} processes (logs in {log_dir})")
            summary = await _submit_and_watch(options, settings, engine, plan, children, console)
            summary.broker = infra.broker
        finally:
            for child in children:
                await child.stop()
            await engine.dispose()
    if summary.ledger_problems:
        for problem in summary.ledger_problems:
            console.print(f"[red]ledger:[/red] {problem}")
    console.print(_table(summary))
    return summary


async def _submit_and_watch(
    options: DemoOptions,
    settings: Settings,
    engine: AsyncEngine,
    plan: _Plan,
    children: list[ChildProcess],
    console: Console,
) -> DemoSummary:
    ids = [order.order_id for order in plan.orders]
    submitted_at: dict[str, float] = {}
    producer = AIOKafkaProducer(**producer_kwargs(settings.kafka))
    await producer.start()
    started = time.time()
    try:
        sends = []
        for order in plan.orders:
            envelope = start_request("order", order, saga_id=order.order_id, source="saga-demo")
            submitted_at[order.order_id] = time.time()
            sends.append(
                await producer.send(
                    Topics(settings.kafka.topic_prefix).requests,
                    envelope.to_bytes(),
                    key=envelope.key(),
                    headers=encode_headers(envelope.headers()),
                )
            )
        await asyncio.gather(*sends)
    finally:
        await producer.stop()
    statuses: dict[str, tuple[str, datetime | None]] = {}
    deadline = started + options.timeout_s
    with Progress(
        TextColumn("[bold]sagas"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[detail]}"),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task("sagas", total=len(ids), detail="")
        while time.time() < deadline:
            statuses = await _statuses(engine, ids)
            done = [s for s, _ in statuses.values() if s in TERMINAL]
            progress.update(
                task,
                completed=len(done),
                detail=f"completed {done.count('COMPLETED')} · compensated "
                f"{done.count('COMPENSATED')} · failed {done.count('FAILED')}",
            )
            if len(done) == len(ids):
                break
            crashed = [c.name for c in children if c.returncode is not None]
            if crashed:
                for child in children:
                    if child.returncode is not None:
                        console.print(f"[red]{child.name} exited[/red]:\n{child.log_tail()}")
                break
            await asyncio.sleep(0.2)
    finished = [at for _, at in statuses.values() if at is not None]
    wall = (max(finished).timestamp() if finished else time.time()) - started
    latencies = [
        (at.timestamp() - submitted_at[saga_id]) * 1000
        for saga_id, (status, at) in statuses.items()
        if status in TERMINAL and at is not None
    ]
    outcomes: dict[str, Literal["COMPLETED", "COMPENSATED"]] = {
        saga_id: "COMPLETED" if status == "COMPLETED" else "COMPENSATED"
        for saga_id, (status, _) in statuses.items()
        if status in ("COMPLETED", "COMPENSATED")
    }
    async with engine.connect() as conn:
        report = await check_ledger(
            conn,
            outcomes,
            initial_stock=plan.stock,
            ordered={o.order_id: o.items for o in plan.orders},
        )
    counts = [status for status, _ in statuses.values()]
    terminal = sum(1 for s in counts if s in TERMINAL)
    return DemoSummary(
        orders=len(ids),
        completed=counts.count("COMPLETED"),
        compensated=counts.count("COMPENSATED"),
        failed=counts.count("FAILED"),
        stuck=len(ids) - terminal,
        wall_s=round(wall, 3),
        sagas_per_s=round(len(ids) / wall, 1) if wall > 0 else 0.0,
        p50_ms=round(_percentile(latencies, 50), 1),
        p95_ms=round(_percentile(latencies, 95), 1),
        p99_ms=round(_percentile(latencies, 99), 1),
        ledger_ok=report.ok,
        ledger_problems=list(report.problems),
    )


def _table(summary: DemoSummary) -> Table:
    table = Table(title="saga demo", show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in summary.as_dict().items():
        if key == "ledger_ok":
            value = "[green]yes[/green]" if value else "[red]NO[/red]"
        table.add_row(key, str(value))
    return table
