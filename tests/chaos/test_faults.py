"""Faults under load: coordinators, a participant instance, PostgreSQL and Kafka fail, and every
saga still ends as planned, with the participants' ledger exact and nothing dead-lettered.

Real processes on real servers: three coordinators and two payment instances (plus inventory
and shipping) as children, on an Apache Kafka node and a PostgreSQL server this test starts
for itself, because it kills and restarts them (the session fixtures' servers are shared by
other tests). While orders arrive at a steady rate:

- a coordinator is SIGKILLed every ~8 s and started again 2 s later (three times; each once
  the previous failover is over and two members are in the group);
- a payment instance is SIGKILLed and started again;
- a coordinator is SIGTERMed once (and started again);
- PostgreSQL is SIGKILLed (every server process, as when its machine dies) and restarted on its
  data directory: crash recovery;
- Kafka is stopped for 60 s and restarted on the same log directories and port.

Right before each server fault the shop sends its next 200 orders at once (a spike), so that
many sagas are in flight when the server goes, however easily the coordinators keep up with the
steady rate.

Failover is measured from outside, with the admin client: from a coordinator's SIGKILL (or
SIGTERM) to the first moment the consumer group is stable again with every partition of the
gone member assigned to a live one ("reassigned"), and to the moment the committed offsets of
all of those partitions that had work moved on ("progressed"). Targets: under 5 s after a
SIGKILL (the session timeout is 3 s), under 1 s after a SIGTERM; the asserts are generous.

The fault schedule is the scenario, so it is timed; every verdict waits for facts. Every verdict
is taken before the test fails, and then ``diagnostics.txt`` in the cluster's log directory
holds the history and outbox rows of sagas that went wrong (the servers' logs are copied there).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from rich.console import Console
from sqlalchemy import text

from coordinator.demo.participants import PARTICIPANTS
from coordinator.demo.processes import ChildProcess
from coordinator.demo.runner import TERMINAL, DemoCluster, DemoOptions, DemoSummary, Infrastructure
from coordinator.devstack import (
    ApacheKafka,
    LocalPostgres,
    PostgresBinaries,
    PrerequisiteMissingError,
    create_database,
)
from coordinator.ops.client import start_request
from coordinator.runtime.kafka import producer_kwargs
from service_sdk.contract import DeadLetterHeader, Topics, encode_headers
from service_sdk.transient import is_transient_database_error
from tests.support.offsets import committed_to_end
from tests.support.waiting import eventually

RATE = 40.0
ORDERS = 4800
"""Two minutes of orders at ``RATE``: still arriving when PostgreSQL and Kafka go down (80-110 s
into the faults), however fast the sagas end, so those faults hit sagas in flight."""
FAIL_RATE = 0.1
COORDINATORS = 3
SESSION_TIMEOUT_MS = 3000
KAFKA_OUTAGE_S = 60.0
SIGKILL_ROUNDS = 3
MIN_IN_FLIGHT = 50
SPIKE = 200
SIGKILL_BOUND_S = 10.0
SIGTERM_BOUND_S = 5.0

StatusMap = dict[str, tuple[str, datetime | None]]


# --- watching the coordinators' consumer group from outside ---------------------------------


@dataclass(frozen=True)
class GroupSnapshot:
    """The group as the broker described it at ``at`` (monotonic seconds)."""

    at: float
    state: str
    members: dict[str, frozenset[TopicPartition]]
    committed: dict[TopicPartition, int]


class GroupWatch:
    """Describes a consumer group and its committed offsets every ``interval`` seconds.

    The admin client is made again after any failure (Kafka may be down for a minute).
    """

    def __init__(self, bootstrap_servers: str, group_id: str, interval: float = 0.1) -> None:
        self._bootstrap = bootstrap_servers
        self._group = group_id
        self._interval = interval
        self.snapshots: list[GroupSnapshot] = []
        self.errors = 0

    async def run(self) -> None:
        admin: AIOKafkaAdminClient | None = None
        try:
            while True:
                try:
                    if admin is None:
                        admin = AIOKafkaAdminClient(
                            bootstrap_servers=self._bootstrap, request_timeout_ms=3000
                        )
                        async with asyncio.timeout(5):
                            await admin.start()
                    async with asyncio.timeout(3):
                        self.snapshots.append(await self._describe(admin))
                except Exception:  # Kafka down or restarting: try again with a new client
                    self.errors += 1
                    if admin is not None:
                        with contextlib.suppress(Exception):
                            await admin.close()
                        admin = None
                    await asyncio.sleep(0.5)
                    continue
                await asyncio.sleep(self._interval)
        finally:
            if admin is not None:
                with contextlib.suppress(Exception):
                    await admin.close()

    async def _describe(self, admin: AIOKafkaAdminClient) -> GroupSnapshot:
        [response] = await admin.describe_consumer_groups([self._group])
        group = response.groups[0]
        state: str = group[2]
        members: dict[str, frozenset[TopicPartition]] = {}
        for member in group[5]:
            member_id, assignment = member[0], member[4]
            partitions = (
                ConsumerProtocolMemberAssignment.decode(assignment).partitions()
                if assignment
                else []
            )
            members[member_id] = frozenset(partitions)
        offsets = await admin.list_consumer_group_offsets(self._group)
        committed = {tp: meta.offset for tp, meta in offsets.items()}
        return GroupSnapshot(time.monotonic(), state, members, committed)

    def latest(self) -> GroupSnapshot | None:
        return self.snapshots[-1] if self.snapshots else None


@dataclass
class Failover:
    """One coordinator taken away, and how soon its partitions were served again."""

    signal: str
    victim: str
    at: float
    partitions: frozenset[TopicPartition] = frozenset()
    left_s: float | None = None
    """Until the victim was out of the group (evicted after a SIGKILL, left after a SIGTERM)."""
    reassigned_s: float | None = None
    progressed_s: float | None = None
    idle: int = 0
    """Partitions of the victim with no committed progress within 30 s (no work came)."""

    def line(self) -> str:
        def seconds(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.2f} s"

        return (
            f"{self.signal} {self.victim}: out of the group after {seconds(self.left_s)}, "
            f"its {len(self.partitions)} partitions reassigned after "
            f"{seconds(self.reassigned_s)}, progressing after {seconds(self.progressed_s)}"
            + (f" ({self.idle} without work)" if self.idle else "")
        )


def measure_failover(
    failover: Failover, snapshots: Sequence[GroupSnapshot], expected: frozenset[TopicPartition]
) -> None:
    """Fill in ``failover`` from the group's history.

    The victim's member is the one that was in the last stable group before the signal and is
    missing from the first stable group after it in which every partition has an owner.
    """
    before = [s for s in snapshots if s.at < failover.at and s.state == "Stable"]
    if not before:
        return
    last = before[-1]
    later = [s for s in snapshots if s.at >= failover.at]
    for snap in later:
        gone = last.members.keys() - snap.members.keys()
        owned = frozenset().union(*snap.members.values()) if snap.members else frozenset()
        if snap.state == "Stable" and gone and owned >= expected:
            failover.partitions = frozenset().union(*(last.members[m] for m in gone))
            failover.reassigned_s = snap.at - failover.at
            # Progress counts from the first look at the group without the victim: from then
            # on only the new owners commit those partitions.
            left = next(i for i, s in enumerate(later) if not gone & s.members.keys())
            failover.left_s = later[left].at - failover.at
            baseline = later[left].committed
            progressed: list[float] = []
            for tp in failover.partitions:
                moved = next(
                    (
                        s.at
                        for s in later[left:]
                        if s.committed.get(tp, -1) > baseline.get(tp, -1)
                        and s.at - failover.at < 30
                    ),
                    None,
                )
                if moved is None:
                    failover.idle += 1
                else:
                    progressed.append(moved - failover.at)
            failover.progressed_s = max(progressed) if progressed else None
            return


# --- load ------------------------------------------------------------------------------------


async def submit_steadily(
    cluster: DemoCluster, rate: float, kafka_up: asyncio.Event, scenario: Scenario
) -> None:
    """Publish every order as a start request at ``rate`` per second, like a shop would
    (order ``i`` is due ``i / rate`` seconds in, less ``scenario.ahead_s``: see :func:`spike`).

    While Kafka is down the shop holds its orders (``kafka_up`` is clear) and sends them when
    it is back; the records already handed to the producer ride the outage out in its buffer.
    """
    settings = cluster.settings.kafka
    producer = AIOKafkaProducer(**producer_kwargs(settings), request_timeout_ms=180_000)
    await producer.start()
    topic = Topics(settings.topic_prefix).requests
    cluster.started_at = time.time()
    began = time.monotonic()
    try:
        sends = []
        for index, order in enumerate(cluster.plan.orders):
            due = began + index / rate - scenario.ahead_s
            await asyncio.sleep(max(due - time.monotonic(), 0))
            await kafka_up.wait()
            envelope = start_request("order", order, saga_id=order.order_id, source="faults")
            cluster.submitted_at[order.order_id] = time.time()
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


# --- the fault schedule ------------------------------------------------------------------------


async def spike(cluster: DemoCluster, scenario: Scenario, count: int = SPIKE) -> None:
    """Bring the shop's next ``count`` orders forward to now and wait until they are sent.

    Right before a server fault, so that plenty of sagas are in flight when it hits, however
    easily the coordinators keep up with the steady rate.
    """
    target = min(len(cluster.submitted_at) + count, len(cluster.plan.orders))
    scenario.ahead_s += count / RATE
    await eventually(
        lambda: len(cluster.submitted_at) >= target,
        timeout=60,
        what=f"a spike of {count} orders submitted",
    )


@dataclass
class Scenario:
    """What was done when, and what was measured."""

    began: float = field(default_factory=time.monotonic)
    events: list[str] = field(default_factory=list)
    failovers: list[Failover] = field(default_factory=list)
    gone: list[ChildProcess] = field(default_factory=list)
    """Children taken away on purpose (their logs stay in the cluster's log directory)."""
    fault_at: dict[str, float] = field(default_factory=dict)
    """When a server was taken down (wall clock), by server."""
    back_at: dict[str, float] = field(default_factory=dict)
    """When a restarted server answered again (wall clock), by server."""
    sigterm_exit: int | None = None
    ahead_s: float = 0.0
    """How far the shop's schedule was brought forward (the spikes before server faults)."""

    last: float = field(default_factory=time.monotonic)
    """When the last fault or restart happened (monotonic)."""

    def log(self, what: str) -> None:
        self.last = time.monotonic()
        wall = datetime.now().strftime("%H:%M:%S.%f")[:-3]  # noqa: DTZ005 (matches the logs)
        line = f"[{self.last - self.began:7.2f} s, {wall}] {what}"
        self.events.append(line)
        print(line, flush=True)

    async def at(self, offset: float, *, gap: float = 0.0) -> None:
        """Sleep until ``offset`` seconds into the scenario and ``gap`` after the last event
        (a slow phase shifts the later ones instead of piling faults on top of each other)."""
        until = max(self.began + offset, self.last + gap)
        await asyncio.sleep(max(until - time.monotonic(), 0))


async def stable_members(bootstrap_servers: str, group_id: str) -> frozenset[str]:
    """The members of ``group_id`` if it is stable, else none."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        [response] = await admin.describe_consumer_groups([group_id])
    finally:
        await admin.close()
    group = response.groups[0]
    return frozenset(m[0] for m in group[5]) if group[2] == "Stable" else frozenset()


def running_coordinators(cluster: DemoCluster) -> list[ChildProcess]:
    return [
        c for c in cluster.children if c.name.startswith("coordinator-") and c.returncode is None
    ]


async def group_ready(
    watch: GroupWatch, expected: frozenset[TopicPartition], losing: frozenset[str] = frozenset()
) -> frozenset[str]:
    """Wait until the group is stable, owns every partition with at least two members (a kill
    leaves a survivor), and no longer holds all of ``losing`` (the members when the last
    victim went: its failover is over); return its members."""

    def ready() -> frozenset[str]:  # empty while not ready
        snap = watch.latest()
        if snap is None or snap.state != "Stable" or len(snap.members) < 2:
            return frozenset()
        ids = frozenset(snap.members)
        if (losing and losing <= ids) or not frozenset().union(*snap.members.values()) >= expected:
            return frozenset()
        return ids

    return await eventually(ready, timeout=120, what="a stable group of two or more coordinators")


async def run_faults(
    cluster: DemoCluster,
    kafka: ApacheKafka,
    postgres: LocalPostgres,
    watch: GroupWatch,
    expected: frozenset[TopicPartition],
    kafka_up: asyncio.Event,
    scenario: Scenario,
) -> None:
    def take_away(child: ChildProcess) -> None:
        cluster.children.remove(child)  # so the cluster's waits do not take it for a crash
        scenario.gone.append(child)

    # Coordinators SIGKILLed every ~8 s, each started again 2 s later. A kill waits until the
    # previous failover is over and two members are in the group (on a busy machine a new
    # coordinator process takes a while to join).
    members = frozenset[str]()
    for round_ in range(SIGKILL_ROUNDS):
        await scenario.at(5 + 8 * round_)
        members = await group_ready(watch, expected, members)
        victim = running_coordinators(cluster)[0]
        failover = Failover("SIGKILL", victim.name, time.monotonic())
        victim.kill()
        scenario.failovers.append(failover)
        take_away(victim)
        scenario.log(f"SIGKILL {victim.name}")
        await asyncio.sleep(2)
        started = await cluster.start_coordinator()
        scenario.log(f"started {started.name}")

    # One payment instance SIGKILLed; the other serves its partitions until it is back.
    await scenario.at(27, gap=3)
    payment_group = f"{cluster.settings.kafka.topic_prefix}payment-service"
    before = await stable_members(kafka.bootstrap_servers, payment_group)
    payment = cluster.child("payment-2")
    payment.kill()
    take_away(payment)
    scenario.log("SIGKILL payment-2")
    await asyncio.sleep(3)
    await cluster.start_participant("payment", 2)
    scenario.log("started payment-2 again")
    # Back in its group before anything else fails (a participant starting while PostgreSQL
    # is down is another scenario).

    async def payment_back() -> bool:
        members = await stable_members(kafka.bootstrap_servers, payment_group)
        return len(members) == 2 and members != before

    await eventually(payment_back, timeout=120, interval=0.5, what="payment-2 in its group")
    scenario.log("payment-2 is back in its group")

    # A coordinator SIGTERMed: it drains and leaves the group.
    await scenario.at(33, gap=3)
    members = await group_ready(watch, expected, members)
    victim = running_coordinators(cluster)[0]
    failover = Failover("SIGTERM", victim.name, time.monotonic())
    stopping = asyncio.create_task(victim.stop(grace_s=30))
    await asyncio.sleep(0)  # the signal is sent before stop() first waits
    scenario.failovers.append(failover)
    scenario.log(f"SIGTERM {victim.name}")
    scenario.sigterm_exit = await stopping
    take_away(victim)
    scenario.log(f"{victim.name} exited with {scenario.sigterm_exit}")
    await asyncio.sleep(max(failover.at + 2 - time.monotonic(), 0))
    started = await cluster.start_coordinator()
    scenario.log(f"started {started.name}")

    # PostgreSQL crashes (every server process SIGKILLed) and comes back on its data directory.
    await scenario.at(40, gap=4)
    await group_ready(watch, expected, members)
    await spike(cluster, scenario)
    scenario.fault_at["postgres"] = time.time()
    await postgres.kill()
    scenario.log("SIGKILL PostgreSQL (the whole process group)")
    await asyncio.sleep(2)
    await postgres.restart()
    scenario.back_at["postgres"] = time.time()
    scenario.log(
        f"PostgreSQL restarted (crash recovery), answering after {postgres.restart_seconds:.1f} s"
    )

    # Kafka stopped for a minute, then started on the same log directories and port. Orders
    # keep coming: the shop holds them while Kafka is down.
    await scenario.at(47, gap=6)
    await spike(cluster, scenario)
    kafka_up.clear()
    scenario.fault_at["kafka"] = time.time()
    scenario.log("stopping Kafka")
    await kafka.halt()
    scenario.log("Kafka stopped")
    await asyncio.sleep(KAFKA_OUTAGE_S)
    await kafka.restart()
    scenario.back_at["kafka"] = time.time()
    kafka_up.set()
    scenario.log(f"Kafka restarted, answering after {kafka.restart_seconds:.1f} s")


# --- verdicts ----------------------------------------------------------------------------------


async def wait_for_the_end(
    cluster: DemoCluster, timeout_s: float, casualties: list[ChildProcess]
) -> StatusMap:
    """Wait until every saga is terminal (or time is up); a child that dies on its own is
    moved to ``casualties`` and the wait goes on with the others."""
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = max(deadline - time.monotonic(), 0)
        try:
            statuses = await cluster.wait(progress=False, timeout_s=remaining)
        except Exception as exc:
            if not is_transient_database_error(exc) or time.monotonic() >= deadline:
                raise
            # A connection of this test's own pool that PostgreSQL's crash left stale (pools
            # are not pinged): SQLAlchemy has discarded it and the older ones; ask again.
            continue
        dead = [c for c in cluster.children if c.returncode is not None]
        if not dead:
            return statuses
        for child in dead:
            cluster.children.remove(child)
            casualties.append(child)
            print(f"{child.name} died on its own (exit {child.returncode})", flush=True)


async def dead_letters(bootstrap_servers: str) -> list[str]:
    """Every record of every ``*.dlq`` topic, one line each (topic, reason, original topic)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        topics = sorted(t for t in await admin.list_topics() if t.endswith(".dlq"))
        described = await admin.describe_topics(topics)
    finally:
        await admin.close()
    assert topics, "no dead-letter topics: the test would prove nothing"
    partitions = [
        TopicPartition(topic["topic"], p["partition"])
        for topic in described
        for p in topic["partitions"]
    ]
    reader = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers, group_id=None, enable_auto_commit=False
    )
    await reader.start()
    try:
        reader.assign(partitions)
        await reader.seek_to_beginning(*partitions)
        ends = await reader.end_offsets(partitions)
        found: list[str] = []
        for tp in partitions:
            while await reader.position(tp) < ends[tp]:
                batch = await reader.getmany(tp, timeout_ms=1000)
                for record in batch.get(tp, []):
                    headers = {k: v.decode(errors="replace") for k, v in record.headers}
                    found.append(
                        f"{tp.topic}: {headers.get(DeadLetterHeader.REASON)} from "
                        f"{headers.get(DeadLetterHeader.ORIGINAL_TOPIC)}: "
                        f"{headers.get(DeadLetterHeader.EXCEPTION_MESSAGE, '')[:200]}"
                    )
        return found
    finally:
        await reader.stop()


async def quiescent(cluster: DemoCluster) -> None:
    """Every group has consumed its topics to the end: nothing is still on its way."""
    bootstrap = cluster.settings.kafka.bootstrap_servers
    topics = Topics(cluster.settings.kafka.topic_prefix)
    group = cluster.settings.kafka.group_id
    await committed_to_end(bootstrap, group, topics.replies)
    await committed_to_end(bootstrap, group, topics.requests)
    for name in PARTICIPANTS:
        service_group = f"{cluster.settings.kafka.topic_prefix}{name}-service"
        await committed_to_end(bootstrap, service_group, topics.commands(name))


def in_flight_at(cluster: DemoCluster, statuses: StatusMap, at: float) -> int:
    """How many sagas were submitted before ``at`` (wall clock) and ended after it."""
    return sum(
        1
        for saga_id, (status, ended) in statuses.items()
        if cluster.submitted_at.get(saga_id, at) < at
        and (status not in TERMINAL or ended is None or ended.timestamp() > at)
    )


def first_terminal_after(statuses: StatusMap, after: float) -> float | None:
    """Seconds from ``after`` (wall clock) to the first saga that became terminal after it."""
    times = [
        at.timestamp() - after
        for status, at in statuses.values()
        if status in TERMINAL and at is not None and at.timestamp() >= after
    ]
    return min(times) if times else None


def outcome_problems(cluster: DemoCluster, statuses: StatusMap) -> list[str]:
    declined = {
        o.order_id for o in cluster.plan.orders if o.customer_id in cluster.plan.declined_customers
    }
    problems = []
    for order_id in cluster.order_ids:
        status = statuses.get(order_id, ("NOT STARTED", None))[0]
        planned = "COMPENSATED" if order_id in declined else "COMPLETED"
        if status != planned:
            problems.append(f"{order_id}: {status}, planned {planned}")
    return problems


async def diagnose(cluster: DemoCluster, problems: Sequence[str], scenario: Scenario) -> Path:
    """Write what the database knows about the sagas that went wrong, next to the logs."""
    ids = [problem.split(":", 1)[0] for problem in problems]
    out = [*scenario.events, ""]
    async with cluster.engine.connect() as conn:
        kinds = await conn.execute(
            text(
                "SELECT kind, step, count(*) AS n FROM saga.saga_history "
                "WHERE saga_id = ANY(:ids) GROUP BY kind, step ORDER BY n DESC"
            ),
            {"ids": ids},
        )
        out.append(f"history of the {len(ids)} sagas that did not end as planned, by kind:")
        out += [f"  {row.n:6d} {row.kind} {row.step}" for row in kinds]
        for saga_id in ids[:5]:
            saga = (
                await conn.execute(
                    text(
                        "SELECT status, failure_reason, created_at, completed_at "
                        "FROM saga.saga_instance WHERE saga_id = :id"
                    ),
                    {"id": saga_id},
                )
            ).first()
            out += ["", f"saga {saga_id}: {saga}"]
            history = await conn.execute(
                text(
                    "SELECT at, kind, step, detail FROM saga.saga_history "
                    "WHERE saga_id = :id ORDER BY id"
                ),
                {"id": saga_id},
            )
            out += [f"  {row.at:%H:%M:%S.%f} {row.kind} {row.step} {row.detail}" for row in history]
            outbox = await conn.execute(
                text(
                    "SELECT created_at, sent_at, topic, headers FROM saga.outbox "
                    "WHERE saga_id = :id ORDER BY id"
                ),
                {"id": saga_id},
            )
            for row in outbox:
                sent = "UNSENT" if row.sent_at is None else f"{row.sent_at:%H:%M:%S.%f}"
                headers = {k: v for k, v in row.headers.items() if k.startswith("ce_saga")}
                out.append(f"  outbox {row.created_at:%H:%M:%S.%f} -> {sent} {row.topic} {headers}")
    path = cluster.log_dir / "diagnostics.txt"
    path.write_text("\n".join(out) + "\n")
    return path


def keep_server_logs(cluster: DemoCluster, *servers: ApacheKafka | LocalPostgres) -> None:
    """Copy the servers' logs next to the children's: their scratch directories go at stop."""
    for server in servers:
        if server.log_path is not None and server.log_path.exists():
            shutil.copy(server.log_path, cluster.log_dir / server.log_path.name)


def log_tails(children: Sequence[ChildProcess], lines: int = 15) -> str:
    return "\n".join(f"--- {c.name} (exit {c.returncode})\n{c.log_tail(lines)}" for c in children)


def _postgres_binaries() -> PostgresBinaries:
    try:
        return PostgresBinaries.find("embedded")
    except PrerequisiteMissingError:
        return PostgresBinaries.find("debian")


def _print_summary(
    cluster: DemoCluster, summary: DemoSummary, scenario: Scenario, statuses: StatusMap
) -> None:
    print("\n=== faults: summary ===")
    for line in scenario.events:
        print(line)
    for failover in scenario.failovers:
        print(failover.line())
    for server, down in scenario.fault_at.items():
        print(f"sagas in flight when {server} went down: {in_flight_at(cluster, statuses, down)}")
    for server, back in scenario.back_at.items():
        first = first_terminal_after(statuses, back)
        shown = "n/a" if first is None else f"{first:.2f} s"
        print(f"first saga terminal after {server} answered again: {shown}")
    print(
        f"orders {summary.orders}: completed {summary.completed}, compensated "
        f"{summary.compensated}, failed {summary.failed}, stuck {summary.stuck}; "
        f"p50 {summary.p50_ms / 1000:.2f} s, p99 {summary.p99_ms / 1000:.2f} s, "
        f"wall {summary.wall_s:.0f} s; ledger ok: {summary.ledger_ok}",
        flush=True,
    )


@pytest.mark.timeout(900)
async def test_sagas_end_as_planned_through_crashes_of_every_component() -> None:
    if os.environ.get("SAGA_TEST_KAFKA", "").strip().lower() == "embedded":
        pytest.skip("needs Apache Kafka: the test restarts its broker on its log directories")
    kafka = ApacheKafka(startup_timeout=120)
    # A crashed server keeps what it acknowledged: synchronous commits (see LocalPostgres).
    postgres = LocalPostgres(
        _postgres_binaries(), startup_timeout=120, settings={"synchronous_commit": "on"}
    )
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(kafka.stop)
        stack.push_async_callback(postgres.stop)
        await asyncio.gather(kafka.start(), postgres.start())
        database_url = await create_database(postgres.url, "faults")
        infra = Infrastructure(kafka.bootstrap_servers, True, database_url, kafka.kind)
        options = DemoOptions(
            orders=ORDERS,
            fail_rate=FAIL_RATE,
            rate=RATE,
            coordinators=COORDINATORS,
            instances={"payment": 2},
            timeout_s=300,
            environment=(("SAGA_KAFKA__SESSION_TIMEOUT_MS", str(SESSION_TIMEOUT_MS)),),
        )
        cluster = DemoCluster(options, infra, Console(quiet=True))
        stack.push_async_callback(cluster.close)
        stack.callback(keep_server_logs, cluster, kafka, postgres)
        print(f"\nfaults: logs in {cluster.log_dir}", flush=True)
        await cluster.prepare()
        await cluster.start()
        await cluster.wait_ready(timeout_s=180)

        topics = Topics(cluster.settings.kafka.topic_prefix)
        partitions = cluster.settings.kafka.reply_partitions
        expected = frozenset(
            TopicPartition(topic, p)
            for topic in (topics.replies, topics.requests)
            for p in range(partitions)
        )
        watch = GroupWatch(kafka.bootstrap_servers, cluster.settings.kafka.group_id)
        watching = asyncio.create_task(watch.run())

        async def stop_watching() -> None:
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching

        stack.push_async_callback(stop_watching)

        def whole() -> bool:
            snap = watch.latest()
            return (
                snap is not None
                and snap.state == "Stable"
                and len(snap.members) == COORDINATORS
                and frozenset().union(*snap.members.values()) >= expected
            )

        await eventually(whole, timeout=120, what="every coordinator in the group")

        kafka_up = asyncio.Event()
        kafka_up.set()
        scenario = Scenario()
        submitting = asyncio.create_task(submit_steadily(cluster, RATE, kafka_up, scenario))
        try:
            await run_faults(cluster, kafka, postgres, watch, expected, kafka_up, scenario)
            await submitting
        finally:
            kafka_up.set()
            if not submitting.done():
                submitting.cancel()
                with contextlib.suppress(BaseException):
                    await submitting

        unexpected: list[ChildProcess] = []
        statuses = await wait_for_the_end(cluster, 300, unexpected)
        summary = await cluster.summarize(statuses)
        for failover in scenario.failovers:
            measure_failover(failover, watch.snapshots, expected)
        _print_summary(cluster, summary, scenario, statuses)

        # Every verdict is taken, so one run shows everything that went wrong.
        failures: list[str] = []
        if unexpected:
            failures.append(f"children died on their own:\n{log_tails(unexpected)}")
        problems = outcome_problems(cluster, statuses)
        if problems:
            path = await diagnose(cluster, problems, scenario)
            failures.append(
                f"{len(problems)} sagas did not end as planned (diagnostics in {path}): "
                f"{problems[:10]}"
            )
        if summary.ledger_problems or not summary.ledger_ok:
            failures.append(f"ledger when the last saga ended: {summary.ledger_problems}")
        for server, down in scenario.fault_at.items():
            if in_flight_at(cluster, statuses, down) < MIN_IN_FLIGHT:
                failures.append(f"few sagas in flight when {server} went down: proves little")
        if scenario.sigterm_exit != 0:
            failures.append(f"the SIGTERMed coordinator exited with {scenario.sigterm_exit}")
        for failover in scenario.failovers:
            bound = SIGKILL_BOUND_S if failover.signal == "SIGKILL" else SIGTERM_BOUND_S
            if failover.reassigned_s is None or failover.reassigned_s >= bound:
                failures.append(f"failover over {bound:g} s or not seen: {failover.line()}")

        # Nothing still on its way, then nothing may have changed and nothing is dead-lettered.
        try:
            await quiescent(cluster)
        except AssertionError as error:
            failures.append(f"not quiescent: {error}")
        again = await cluster.summarize(await cluster.statuses())
        if again.ledger_problems != summary.ledger_problems:
            failures.append(f"ledger after the last message: {again.ledger_problems}")
        letters = await dead_letters(kafka.bootstrap_servers)
        print(f"dead letters: {len(letters)}", flush=True)
        if letters:
            failures.append(f"{len(letters)} dead letters: {letters[:10]}")
        assert not failures, f"logs in {cluster.log_dir}\n" + "\n".join(failures)
