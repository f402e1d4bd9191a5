"""``saga bench``: the order saga's throughput, latency and resource use, measured.

One cluster (the demo's coordinator and three participants as child processes) runs on one
Kafka and one PostgreSQL for the whole benchmark; every run gets fresh orders. A load level
is a closed loop of ``W`` sagas in flight (a new saga starts when one ends, as its client sees
the end: a terminal event on ``saga.events``) or an open loop of ``R`` starts per second. Runs
interleave the levels (run 1 of every level, then run 2, ...) so that a noisy neighbour hurts
them alike; :mod:`coordinator.demo.bench_report` reports each level as median [min-max].

While a run lasts, a :class:`~coordinator.demo.sampling.ProcessSampler` reads the CPU time and
resident memory of each child, the broker and PostgreSQL. The bare pipeline (``pingpong.py``)
can run on the same servers after each round, for a ratio measured under the same conditions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import resource
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from rich.console import Console
from sqlalchemy import text
from sqlalchemy.engine import make_url

from coordinator.app import Coordinator
from coordinator.config import EventSettings, KafkaSettings
from coordinator.core.state import LifecyclePublishing
from coordinator.demo.bench_report import (
    BROKER,
    DATABASE,
    DRIVER,
    TOTAL,
    BaselineResult,
    BenchReport,
    Load,
    RunResult,
    aggregate,
    tenth_rates,
)

# _plan: the demo's order generator; a run needs fresh orders without a fresh cluster.
from coordinator.demo.runner import DemoCluster, DemoOptions, Infrastructure, _plan
from coordinator.demo.sampling import ProcessSampler, Usage, Watched, listening_pids
from coordinator.devstack import (
    ApacheKafka,
    DevStack,
    EmbeddedKafka,
    ExternalKafka,
    ExternalPostgres,
    KafkaService,
    LocalPostgres,
    PostgresBinaries,
    PostgresService,
    PrerequisiteMissingError,
    asyncpg_dsn,
)
from coordinator.ops.client import start_request
from coordinator.runtime.kafka import start_producer
from saga_defs import OrderData, default_registry
from service_sdk.contract import Header, Topics, encode_headers

__all__ = ["BenchOptions", "WindowBook", "due_starts", "run_bench"]

KafkaChoice = Literal["apache", "embedded", "external"]
TERMINAL_EVENTS = frozenset({"saga.completed", "saga.compensated", "saga.failed"})
_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
STARTUP_TIMEOUT_S = 120.0
_PROGRESS_EVERY_S = 15.0


@dataclass(frozen=True)
class BenchOptions:
    """What the benchmark runs on and which loads it applies."""

    orders: int = 1000
    """Sagas per run."""
    loads: tuple[Load, ...] = (Load("window", 100),)
    runs: int = 3
    warmup: int = 0
    """Sagas run once before the measured runs and not measured: a broker just started spends
    more CPU compiling (its JIT) than serving, which no long-running deployment pays."""
    kafka: KafkaChoice = "apache"
    bootstrap_servers: str | None = None
    """The broker of ``kafka="external"``."""
    idempotent: bool | None = None
    """Idempotent producers; None: whatever the broker supports (external: on)."""
    database_url: str | None = None
    """An existing PostgreSQL (its own fsync setting); None starts one here."""
    fsync: bool = True
    """fsync of the PostgreSQL started here: on is durable, as production runs."""
    fail_rate: float = 0.0
    """Fraction of orders whose payment is declined (they compensate)."""
    events: LifecyclePublishing = LifecyclePublishing.ALL
    """The coordinator's ``SAGA_EVENTS__PUBLISH``; the bench sees sagas end by their terminal
    events, so ``none`` is refused."""
    seed: int = 7
    timeout_s: float = 300.0
    """Per run: sagas not ended by then count as stuck."""
    baseline_script: Path | None = None
    """``pingpong.py``, run once per round on the same servers; None: no baseline."""
    sample_interval_s: float = 0.25


class WindowBook:
    """The closed loop's bookkeeping: at most ``window`` sagas in flight, the next one
    released each time one ends.

    An end of a saga it did not release, or already counted, is ignored: lifecycle events
    arrive at least once, and a shared broker carries other runs' sagas.
    """

    def __init__(self, saga_ids: Sequence[str], window: int) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, not {window}")
        self.window = window
        self._waiting = list(reversed(saga_ids))
        self._in_flight: set[str] = set()
        self.released = 0
        self.ended = 0

    @property
    def in_flight(self) -> int:
        """Released and not ended yet."""
        return len(self._in_flight)

    @property
    def done(self) -> bool:
        """Every saga released and ended."""
        return not self._waiting and not self._in_flight

    def take(self) -> list[str]:
        """The sagas to start now (as many as fill the window), in their given order."""
        taken: list[str] = []
        while self._waiting and len(self._in_flight) < self.window:
            saga_id = self._waiting.pop()
            self._in_flight.add(saga_id)
            taken.append(saga_id)
        self.released += len(taken)
        return taken

    def end(self, saga_id: str) -> bool:
        """Record that ``saga_id`` ended; False when it was not in flight."""
        if saga_id not in self._in_flight:
            return False
        self._in_flight.remove(saga_id)
        self.ended += 1
        return True


def due_starts(total: int, rate: float, elapsed_s: float) -> int:
    """How many of ``total`` starts are due ``elapsed_s`` after the first at ``rate``/s."""
    if elapsed_s < 0:
        return 0
    return min(total, math.floor(elapsed_s * rate + 1e-9) + 1)


def _local_port(host: str | None, port: int | None) -> int | None:
    """``port`` when ``host`` is this machine (so its process can be watched), else None."""
    return port if host in _LOOPBACK_HOSTS and port else None


@dataclass(frozen=True)
class _Servers:
    infra: Infrastructure
    kafka: str
    postgres: str
    kafka_port: int | None
    postgres_port: int | None


@contextlib.asynccontextmanager
async def _servers(options: BenchOptions, console: Console) -> AsyncIterator[_Servers]:
    """The chosen broker and PostgreSQL: started here (and removed after) or external."""
    kafka: KafkaService
    if options.kafka == "external":
        if not options.bootstrap_servers:
            raise ValueError("kafka=external needs bootstrap_servers")
        idempotent = True if options.idempotent is None else options.idempotent
        kafka = ExternalKafka(options.bootstrap_servers, supports_idempotence=idempotent)
    elif options.kafka == "apache":
        # Generous: a JVM starting on a busy machine, where benchmarks tend to be run.
        kafka = ApacheKafka(startup_timeout=STARTUP_TIMEOUT_S)
    else:
        kafka = EmbeddedKafka(startup_timeout=STARTUP_TIMEOUT_S)
    postgres: PostgresService
    if options.database_url is not None:
        postgres = ExternalPostgres(options.database_url)
    else:
        try:
            binaries = PostgresBinaries.find("embedded")
        except PrerequisiteMissingError:
            binaries = PostgresBinaries.find("debian")
        postgres = LocalPostgres(binaries, fsync=options.fsync, startup_timeout=STARTUP_TIMEOUT_S)
    console.log(f"starting Kafka ({kafka.kind}) and PostgreSQL ({postgres.kind})")
    async with DevStack(kafka, postgres):
        idempotent = kafka.supports_idempotence
        if options.idempotent is not None:
            idempotent = options.idempotent and idempotent
        here = "external" if kafka.kind == "external" else "started here"
        bootstrap = kafka.bootstrap_servers
        host, _, port = bootstrap.split(",")[0].rpartition(":")
        url = make_url(postgres.url)
        yield _Servers(
            Infrastructure(bootstrap, idempotent, postgres.url, kafka.kind),
            kafka=f"{kafka.kind} {kafka.version} at {bootstrap} ({here}), "
            f"idempotent producer {'on' if idempotent else 'off'}",
            postgres=f"{postgres.kind} {postgres.version} at {url.host}:{url.port} "
            f"({'external' if postgres.kind == 'external' else 'started here'})",
            kafka_port=_local_port(host, int(port) if port.isdigit() else None),
            postgres_port=_local_port(url.host, url.port),
        )


class _SagaEnds:
    """The ends of sagas as their clients see them: terminal events on ``saga.events``."""

    def __init__(self, settings: KafkaSettings, topic: str, partitions: int) -> None:
        self._partitions = [TopicPartition(topic, p) for p in range(partitions)]
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
        )

    async def start(self) -> None:
        """Read from the current end of every partition."""
        await self._consumer.start()
        self._consumer.assign(self._partitions)
        await self._consumer.seek_to_end(*self._partitions)
        for partition in self._partitions:
            await self._consumer.position(partition)

    async def read(self, timeout_s: float) -> list[str]:
        """The saga ids of the terminal events that arrive within ``timeout_s``."""
        batch = await self._consumer.getmany(timeout_ms=max(int(timeout_s * 1000), 0))
        ended: list[str] = []
        for records in batch.values():
            for record in records:
                headers = {k: v for k, v in record.headers or ()}
                if headers.get(Header.TYPE, b"").decode() in TERMINAL_EVENTS:
                    ended.append(headers.get(Header.SAGA_ID, b"").decode())
        return ended

    async def stop(self) -> None:
        """Close the consumer."""
        await self._consumer.stop()


class _BenchCluster(DemoCluster):
    """The demo cluster, run again and again with fresh orders, its load driven here."""

    def renew(self, orders: int | None = None) -> None:
        """Fresh orders (and customers, stock) for the next run: ``orders`` of them, or as
        many as the options say."""
        options = self.options if orders is None else replace(self.options, orders=orders)
        self.plan = _plan(options)
        self.submitted_at = {}
        self.end_times: list[float] = []

    def watched(self, servers: _Servers) -> list[Watched]:
        """Every child, the broker and PostgreSQL, and this process; the children found by
        the port each serves its metrics on, the servers by theirs."""
        children = [c.name for c in self.children if c.returncode is None]
        ports = [self.metrics_ports[name] for name in children]
        ports += [p for p in (servers.kafka_port, servers.postgres_port) if p]
        pids = listening_pids(ports)
        watched = [Watched(name, pids.get(self.metrics_ports[name])) for name in children]
        watched.append(Watched(BROKER, pids.get(servers.kafka_port or -1)))
        watched.append(Watched(DATABASE, pids.get(servers.postgres_port or -1)))
        watched.append(Watched(DRIVER, os.getpid(), tree=False))
        return watched

    async def drive(self, load: Load, ends: _SagaEnds, timeout_s: float) -> None:
        """Start every order's saga as ``load`` says; return once all ended, a child died,
        or ``timeout_s`` passed."""
        orders = {order.order_id: order for order in self.plan.orders}
        ids = list(orders)
        book = WindowBook(ids, int(load.value) if load.kind == "window" else len(ids))
        queue = book.take()
        producer = await start_producer(self.settings.kafka)
        topic = Topics(self.settings.kafka.topic_prefix).requests
        sends: list[asyncio.Future[Any]] = []
        sent = 0
        began = time.monotonic()
        deadline = began + timeout_s
        self.started_at = time.time()
        next_report = began + _PROGRESS_EVERY_S
        try:
            while not book.done and time.monotonic() < deadline:
                now = time.monotonic()
                if now >= next_report:
                    # A long run shows how far it is (a 100,000-saga run takes many minutes).
                    next_report = now + _PROGRESS_EVERY_S
                    self.console.log(
                        f"  {book.ended:,} of {len(ids):,} sagas ended, {book.in_flight:,} in "
                        f"flight, {book.ended / (now - began):.1f} sagas/s so far"
                    )
                due = len(queue)
                if load.kind == "rate":
                    due = due_starts(len(queue), load.value, now - began)
                for saga_id in queue[sent:due]:
                    sends.append(await self._send(producer, topic, orders[saga_id]))
                sent = due
                wait = 0.05
                if load.kind == "rate" and sent < len(queue):
                    wait = min(wait, max(began + sent / load.value - time.monotonic(), 0.0))
                for saga_id in await ends.read(wait):
                    if book.end(saga_id):
                        self.end_times.append(time.monotonic())
                if load.kind == "window":
                    queue += book.take()
                if any(c.returncode is not None for c in self.children):
                    break
                _raise_failed_sends(sends)
            await asyncio.gather(*sends)
        finally:
            await producer.stop()

    async def _send(
        self, producer: AIOKafkaProducer, topic: str, order: OrderData
    ) -> asyncio.Future[Any]:
        envelope = start_request("order", order, saga_id=order.order_id, source="bench")
        self.submitted_at[order.order_id] = time.time()
        future: asyncio.Future[Any] = await producer.send(
            topic,
            envelope.to_bytes(),
            key=envelope.key(),
            headers=encode_headers(envelope.headers()),
        )
        return future

    async def server_setting(self, name: str) -> str:
        """``SHOW <name>`` of the database server."""
        async with self.engine.connect() as conn:
            return str((await conn.execute(text(f"SHOW {name}"))).scalar_one())


def _raise_failed_sends(sends: list[asyncio.Future[Any]]) -> None:
    for future in sends:
        error = future.exception() if future.done() else None
        if error is not None:
            raise error
    sends[:] = [f for f in sends if not f.done()]


async def _measure(
    cluster: _BenchCluster,
    load: Load,
    run: int,
    ends: _SagaEnds,
    sampler: ProcessSampler,
    timeout_s: float,
) -> RunResult:
    cluster.renew()
    await cluster.prepare()
    await cluster.wait_ready()
    sampler.start()
    try:
        await cluster.drive(load, ends, timeout_s)
    finally:
        usage = sampler.stop()
    summary = await cluster.summarize(await cluster.statuses())
    dead = [c for c in cluster.children if c.returncode is not None]
    if dead:
        tails = "\n".join(f"--- {c.name}\n{c.log_tail()}" for c in dead)
        raise RuntimeError(f"{', '.join(c.name for c in dead)} exited during the run:\n{tails}")
    return RunResult(load, run, summary, usage, tenth_rates(cluster.end_times))


async def _warm_up(
    cluster: _BenchCluster, load: Load, orders: int, ends: _SagaEnds, timeout_s: float
) -> None:
    """Run ``orders`` sagas at ``load`` without measuring them."""
    cluster.renew(orders)
    await cluster.prepare()
    await cluster.wait_ready()
    await cluster.drive(load, ends, timeout_s)
    dead = [c.name for c in cluster.children if c.returncode is not None]
    if dead:
        raise RuntimeError(f"{', '.join(dead)} exited during the warm-up")


async def _pingpong(
    script: Path,
    servers: _Servers,
    orders: int,
    run: int,
    sampler: ProcessSampler,
    timeout_s: float,
) -> BaselineResult:
    """Run the bare pipeline once; its own CPU time is what its finished processes used."""
    args = [str(script), servers.infra.bootstrap_servers, asyncpg_dsn(servers.infra.database_url)]
    args += [str(orders)] + (["--idempotent"] if servers.infra.idempotent else [])
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    sampler.start()
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        try:
            async with asyncio.timeout(timeout_s):
                out, err = await process.communicate()
        except TimeoutError:
            process.kill()
            await process.wait()
            raise RuntimeError(f"{script.name} did not finish within {timeout_s:.0f}s") from None
    finally:
        usage = sampler.stop()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines = [line for line in out.decode(errors="replace").splitlines() if line.strip()]
    if process.returncode != 0 or not lines:
        tail = "\n".join(err.decode(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"{script.name} failed (exit {process.returncode}):\n{tail}")
    result = json.loads(lines[-1])
    own = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return BaselineResult(
        run=run,
        orders=orders,
        sagas_per_s=float(result["sagas_per_s"]),
        p50_ms=float(result["p50_ms"]),
        p99_ms=float(result["p99_ms"]),
        wall_s=float(result["wall_s"]),
        usage=Usage({"pingpong": own, **usage.cpu_s}, usage.peak_rss_mb),
    )


async def run_bench(options: BenchOptions, console: Console) -> BenchReport:
    """Run every load level ``options.runs`` times (and the baseline once per round)."""
    if options.events is LifecyclePublishing.NONE:
        raise RuntimeError(
            "the bench sees sagas end by their terminal events: it cannot run "
            "with SAGA_EVENTS__PUBLISH=none"
        )
    prefix = f"bench{os.urandom(3).hex()}."
    demo = DemoOptions(
        orders=options.orders,
        fail_rate=options.fail_rate,
        seed=options.seed,
        timeout_s=options.timeout_s,
        topic_prefix=prefix,
        quiet=True,
    )
    async with _servers(options, console) as servers:
        cluster = _BenchCluster(demo, servers.infra, console)
        cluster.settings = cluster.settings.model_copy(
            update={"events": EventSettings(publish=options.events)}
        )
        topics = dict(Coordinator(cluster.settings, default_registry()).topic_plan())
        events = Topics(prefix).events
        ends = _SagaEnds(cluster.settings.kafka, events, topics[events])
        try:
            console.log("migrating, seeding the participants and creating topics")
            await cluster.prepare()
            await cluster.start()
            console.log(f"started {len(cluster.children)} processes (logs in {cluster.log_dir})")
            await cluster.wait_ready()
            await ends.start()
            report = BenchReport(
                orders=options.orders,
                runs=options.runs,
                warmup=options.warmup,
                lifecycle_events=options.events.value,
                fail_rate=options.fail_rate,
                kafka=servers.kafka,
                idempotent=servers.infra.idempotent,
                postgres=servers.postgres,
                fsync=await cluster.server_setting("fsync"),
                synchronous_commit=await cluster.server_setting("synchronous_commit"),
            )
            watched = cluster.watched(servers)
            sampler = ProcessSampler(watched, options.sample_interval_s)
            server_sampler = ProcessSampler([w for w in watched if w.role in (BROKER, DATABASE)])
            if options.warmup:
                console.log(f"warming up: {options.warmup:,} sagas, not measured")
                await _warm_up(cluster, options.loads[0], options.warmup, ends, options.timeout_s)
            results: dict[Load, list[RunResult]] = {load: [] for load in options.loads}
            for run in range(1, options.runs + 1):
                for load in options.loads:
                    result = await _measure(cluster, load, run, ends, sampler, options.timeout_s)
                    results[load].append(result)
                    _log_run(console, result)
                if options.baseline_script is not None:
                    baseline = await _pingpong(
                        options.baseline_script,
                        servers,
                        options.orders,
                        run,
                        server_sampler,
                        options.timeout_s,
                    )
                    report.baselines.append(baseline)
                    console.log(
                        f"run {run}/{options.runs} pingpong: {baseline.sagas_per_s:.1f} sagas/s, "
                        f"p99 {baseline.p99_ms:.0f} ms"
                    )
        finally:
            with contextlib.suppress(Exception):
                await ends.stop()
            await cluster.close()
    report.levels = [aggregate(load, runs, report.baselines) for load, runs in results.items()]
    return report


def _log_run(console: Console, result: RunResult) -> None:
    s = result.summary
    total = result.cpu_ms_per_saga.get(TOTAL)
    cpu = "n/a" if total is None else f"{total:.1f}"
    ledger = "ok" if s.ledger_ok else "[red]FAILED[/red]"
    console.log(
        f"run {result.run} {result.load.label}: {s.sagas_per_s:.1f} sagas/s, p50 {s.p50_ms:.0f} "
        f"ms, p99 {s.p99_ms:.0f} ms, CPU {cpu} ms/saga, ledger {ledger}"
        + (f", [red]{s.failed} failed, {s.stuck} stuck[/red]" if s.failed or s.stuck else "")
    )
