"""``saga demo``: the order saga end to end, on real Kafka and PostgreSQL, measured."""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.app import Coordinator
from coordinator.config import DatabaseSettings, KafkaSettings, MetricsSettings, Settings
from coordinator.demo.ledger import check_ledger
from coordinator.demo.participants import PARTICIPANTS, inventory, payment
from coordinator.demo.processes import ChildProcess, child_env
from coordinator.ops.client import start_request
from coordinator.runtime.kafka import ensure_topics, start_producer
from coordinator.store.database import create_engine
from coordinator.store.migrate import upgrade_database
from saga_defs import OrderData, default_registry
from saga_defs.order import OrderItem
from service_sdk.contract import Topics, encode_headers

__all__ = [
    "DemoCluster",
    "DemoOptions",
    "DemoSummary",
    "Infrastructure",
    "infrastructure",
    "run_demo",
]

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
    topic_prefix: str = ""
    """Prefixes topics and consumer groups, so runs sharing a broker stay apart."""
    rate: float = 0.0
    """Orders submitted per second; 0 submits them all at once (a burst)."""
    handler_delay_ms: float = 0.0
    """Added to every participant command: slow participants, so a burst builds queues."""
    registry: str | None = None
    """The coordinators' saga definitions (``SAGA_REGISTRY``); None: the configured one."""
    environment: tuple[tuple[str, str], ...] = ()
    """Extra environment of every child process (e.g. ``SAGA_ADMISSION__MAX_IN_FLIGHT``)."""
    instances: Mapping[str, int] = field(default_factory=dict)
    """Processes per participant (default one): ``{"payment": 2}`` runs the children
    ``payment`` and ``payment-2``, two members of the payment service's consumer group."""


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
    from coordinator.devstack import (
        EmbeddedKafka,
        LocalPostgres,
        PostgresBinaries,
        PrerequisiteMissingError,
    )

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
            try:
                binaries = PostgresBinaries.find("embedded")
            except PrerequisiteMissingError:
                binaries = PostgresBinaries.find("debian")
            console.log(f"starting PostgreSQL ({binaries.flavor} server binaries)")
            postgres = await stack.enter_async_context(LocalPostgres(binaries))
            database_url = postgres.url
        yield Infrastructure(bootstrap, idempotent, database_url, broker)


@dataclass(frozen=True)
class _Plan:
    orders: list[OrderData]
    declined_customers: set[str]
    stock: dict[str, int]
    warmup: OrderData
    warmup_stock: dict[str, int]


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
    warmup = OrderData(
        order_id=f"{run}-warmup",
        customer_id=f"{run}-warmup-customer",
        items=(OrderItem(sku=f"{run}-warmup-sku", quantity=1),),
        amount_cents=100,
    )
    return _Plan(
        orders,
        declined_customers,
        {sku: 1_000_000 for sku in skus},
        warmup,
        {f"{run}-warmup-sku": 1},
    )


async def _prepare(engine: AsyncEngine, plan: _Plan) -> None:
    async with engine.begin() as conn:
        for module in PARTICIPANTS.values():
            await module.install(conn)
        await inventory.seed(conn, {**plan.stock, **plan.warmup_stock})
        customers = {o.customer_id: "ok" for o in [*plan.orders, plan.warmup]}
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


def demo_settings(options: DemoOptions, infra: Infrastructure) -> Settings:
    """The settings a demo's processes share (its topic prefix and consumer group)."""
    return Settings(
        kafka=KafkaSettings(
            bootstrap_servers=infra.bootstrap_servers,
            idempotent=infra.idempotent,
            topic_prefix=options.topic_prefix,
            group_id=f"{options.topic_prefix}saga-coordinator",
        ),
        database=DatabaseSettings(url=infra.database_url),
        # A demo lasts seconds: sample the database gauges every second.
        metrics=MetricsSettings(refresh_interval_s=1.0),
    )


class DemoCluster:
    """The demo's moving parts on given infrastructure: coordinator(s) and the three
    participants as separate processes, the orders to submit, and the checks."""

    def __init__(self, options: DemoOptions, infra: Infrastructure, console: Console) -> None:
        self.options = options
        self.infra = infra
        self.console = console
        self.plan = _plan(options)
        self.settings = demo_settings(options, infra)
        self.engine = create_engine(infra.database_url, pool_size=2)
        self.log_dir = Path(tempfile.mkdtemp(prefix="saga-demo-"))
        self.children: list[ChildProcess] = []
        self.metrics_ports: dict[str, int] = {}
        """Where each child (by name) serves ``/metrics`` on 127.0.0.1."""
        self.submitted_at: dict[str, float] = {}
        self.started_at = 0.0
        self._coordinators = 0

    @property
    def order_ids(self) -> list[str]:
        """The ids of the orders (and their sagas)."""
        return [order.order_id for order in self.plan.orders]

    async def prepare(self) -> None:
        """Migrate, create the participants' tables and seed them, create the topics."""
        await upgrade_database(self.settings.database.url)
        await _prepare(self.engine, self.plan)
        plan = Coordinator(self.settings, default_registry()).topic_plan()
        await ensure_topics(self.infra.bootstrap_servers, plan)

    async def start_coordinator(self) -> ChildProcess:
        """Start one more coordinator process."""
        name = f"coordinator-{self._coordinators}"
        child = ChildProcess(name, ["run"], self._child_env(name), self.log_dir)
        self._coordinators += 1
        await child.start()
        self.children.append(child)
        return child

    async def start(self) -> None:
        """Start the coordinator(s) and the participants."""
        for _ in range(self.options.coordinators):
            await self.start_coordinator()
        for name in PARTICIPANTS:
            for instance in range(1, self.options.instances.get(name, 1) + 1):
                await self.start_participant(name, instance)

    async def start_participant(self, name: str, instance: int = 1) -> ChildProcess:
        """Start (or start again) instance ``instance`` of the example participant ``name``;
        the child is called ``name`` for the first instance, ``name-<instance>`` for others."""
        args = ["participant", name]
        if self.options.handler_delay_ms:
            args += ["--handler-delay-ms", str(self.options.handler_delay_ms)]
        child_name = name if instance == 1 else f"{name}-{instance}"
        child = ChildProcess(child_name, args, self._child_env(child_name), self.log_dir)
        await child.start()
        self.children.append(child)
        return child

    def child(self, name: str) -> ChildProcess:
        """The running child process called ``name``."""
        return next(c for c in self.children if c.name == name and c.returncode is None)

    def _child_env(self, name: str) -> dict[str, str]:
        from coordinator.devstack.ports import free_port

        self.metrics_ports[name] = port = free_port()
        env = child_env(self.settings, metrics_port=port)
        if self.options.registry is not None:
            env["SAGA_REGISTRY"] = self.options.registry
        env.update(self.options.environment)
        return env

    async def wait_ready(self, timeout_s: float = 90.0) -> float:
        """Run one warm-up saga through every process, so latencies exclude start-up
        (consumer-group joins). Returns the seconds it took."""
        began = time.monotonic()
        warmup = self.plan.warmup
        await self._publish([warmup])
        while True:
            status = (await _statuses(self.engine, [warmup.order_id])).get(warmup.order_id)
            if status is not None and status[0] in TERMINAL:
                return time.monotonic() - began
            dead = [c for c in self.children if c.returncode is not None]
            if dead or time.monotonic() - began > timeout_s:
                tails = "\n".join(f"--- {c.name}\n{c.log_tail()}" for c in self.children)
                raise RuntimeError(f"not ready after {time.monotonic() - began:.0f}s:\n{tails}")
            await asyncio.sleep(0.1)

    async def _publish(self, orders: list[OrderData], rate: float = 0.0) -> None:
        producer = await start_producer(self.settings.kafka)
        topic = Topics(self.settings.kafka.topic_prefix).requests
        began = time.monotonic()
        try:
            sends = []
            for index, order in enumerate(orders):
                if rate > 0:
                    # Paced by the schedule, not by sleeps, so slow sends do not add up.
                    await asyncio.sleep(max(began + index / rate - time.monotonic(), 0))
                envelope = start_request("order", order, saga_id=order.order_id, source="demo")
                self.submitted_at[order.order_id] = time.time()
                sends.append(
                    await producer.send(
                        topic,
                        envelope.to_bytes(),
                        key=envelope.key(),
                        headers=encode_headers(envelope.headers()),
                    )
                )
            await asyncio.gather(*sends)
        finally:
            await producer.stop()

    async def submit(self) -> None:
        """Publish every order as a start request to ``saga.requests``, all at once or at
        ``options.rate`` orders per second."""
        self.started_at = time.time()
        await self._publish(self.plan.orders, self.options.rate)

    async def statuses(self) -> dict[str, tuple[str, datetime | None]]:
        """Each order's saga status and completion time (absent: not started yet)."""
        return await _statuses(self.engine, self.order_ids)

    async def wait(
        self, *, until: int | None = None, timeout_s: float | None = None, progress: bool = True
    ) -> dict[str, tuple[str, datetime | None]]:
        """Wait until ``until`` sagas (default all) are terminal, a child dies, or time is up."""
        target = len(self.plan.orders) if until is None else until
        deadline = time.time() + (self.options.timeout_s if timeout_s is None else timeout_s)
        statuses: dict[str, tuple[str, datetime | None]] = {}
        with Progress(
            TextColumn("[bold]sagas"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[detail]}"),
            console=self.console,
            disable=not progress,
        ) as bar:
            task = bar.add_task("sagas", total=len(self.plan.orders), detail="")
            while True:
                statuses = await self.statuses()
                done = [s for s, _ in statuses.values() if s in TERMINAL]
                bar.update(
                    task,
                    completed=len(done),
                    detail=f"completed {done.count('COMPLETED')} · compensated "
                    f"{done.count('COMPENSATED')} · failed {done.count('FAILED')}",
                )
                if len(done) >= target or time.time() >= deadline:
                    return statuses
                dead = [c for c in self.children if c.returncode is not None]
                if dead:
                    for child in dead:
                        self.console.print(f"[red]{child.name} exited[/red]:\n{child.log_tail()}")
                    return statuses
                await asyncio.sleep(0.2)

    async def summarize(self, statuses: dict[str, tuple[str, datetime | None]]) -> DemoSummary:
        """Counts, latencies (submit to terminal) and the participants' ledger check."""
        finished = [at for _, at in statuses.values() if at is not None]
        wall = (max(finished).timestamp() if finished else time.time()) - self.started_at
        latencies = [
            (at.timestamp() - self.submitted_at[saga_id]) * 1000
            for saga_id, (status, at) in statuses.items()
            if status in TERMINAL and at is not None
        ]
        outcomes: dict[str, Literal["COMPLETED", "COMPENSATED"]] = {
            saga_id: "COMPLETED" if status == "COMPLETED" else "COMPENSATED"
            for saga_id, (status, _) in statuses.items()
            if status in ("COMPLETED", "COMPENSATED")
        }
        async with self.engine.connect() as conn:
            report = await check_ledger(
                conn,
                outcomes,
                initial_stock=self.plan.stock,
                ordered={o.order_id: o.items for o in self.plan.orders},
            )
        counts = [status for status, _ in statuses.values()]
        terminal = sum(1 for s in counts if s in TERMINAL)
        orders = len(self.plan.orders)
        return DemoSummary(
            orders=orders,
            completed=counts.count("COMPLETED"),
            compensated=counts.count("COMPENSATED"),
            failed=counts.count("FAILED"),
            stuck=orders - terminal,
            wall_s=round(wall, 3),
            sagas_per_s=round(orders / wall, 1) if wall > 0 else 0.0,
            p50_ms=round(_percentile(latencies, 50), 1),
            p95_ms=round(_percentile(latencies, 95), 1),
            p99_ms=round(_percentile(latencies, 99), 1),
            ledger_ok=report.ok,
            broker=self.infra.broker,
            ledger_problems=list(report.problems),
        )

    async def close(self) -> None:
        """Stop every child (SIGTERM, then SIGKILL after a grace period) and the engine."""
        for child in self.children:
            await child.stop()
        await self.engine.dispose()


class RunnableCluster(Protocol):
    """What :func:`run_demo` drives: the order demo's cluster, or another demo's."""

    children: list[ChildProcess]
    console: Console
    settings: Settings
    log_dir: Path

    async def prepare(self) -> None: ...
    async def start(self) -> None: ...
    async def wait_ready(self) -> float: ...
    async def submit(self) -> None: ...
    async def wait(self) -> dict[str, tuple[str, datetime | None]]: ...
    async def summarize(self, statuses: dict[str, tuple[str, datetime | None]]) -> DemoSummary: ...
    async def close(self) -> None: ...


async def run_demo(
    options: DemoOptions,
    *,
    keep: tuple[int, str, asyncio.Event] | None = None,
    cluster_type: Callable[[DemoOptions, Infrastructure, Console], RunnableCluster] = DemoCluster,
) -> DemoSummary:
    """Run the demo and return its summary (the table goes to stderr when ``quiet``).

    Args:
        keep: ``(port, token, stop)``: once the summary is printed, keep everything running
            (the console on ``port``, for ``token``) until ``stop`` is set, as ``saga dev``
            does. ``options.environment`` must then serve HTTP on that port with that token.
        cluster_type: The demo's processes and plan (the trip demo passes its own).
    """
    from coordinator.demo.dev_server import print_access, serve_until_stopped

    console = Console(stderr=options.quiet)
    async with infrastructure(options, console) as infra:
        cluster = cluster_type(options, infra, console)
        try:
            console.log("migrating, seeding the participants and creating topics")
            await cluster.prepare()
            await cluster.start()
            console.log(f"started {len(cluster.children)} processes (logs in {cluster.log_dir})")
            waited = await cluster.wait_ready()
            console.log(f"warm-up saga done after {waited:.1f}s; submitting the orders")
            await cluster.submit()
            statuses = await cluster.wait()
            summary = await cluster.summarize(statuses)
            for problem in summary.ledger_problems:
                console.print(f"[red]ledger:[/red] {problem}")
            console.print(_table(summary))
            if keep is not None:
                port, token, stop = keep
                print_access(console, cluster.settings, port, token, data_dir=None)
                await serve_until_stopped(cluster, stop)
        finally:
            await cluster.close()
    return summary


def _table(summary: DemoSummary) -> Table:
    table = Table(title="saga demo", show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in summary.as_dict().items():
        if key == "ledger_ok":
            value = "[green]yes[/green]" if value else "[red]NO[/red]"
        table.add_row(key, str(value))
    return table
