"""``saga demo --saga trip``: the trip saga end to end, every shape on real Kafka and PostgreSQL.

Two coordinators and one process running the seven trip participants. The plan (seeded) sets
up what happens to each trip: most complete; some are refused by a booking desk (the parallel
group unwinds), by the fraud check (only trips above 1,500 are screened) or at the tickets
(after the loyalty child saga: its points are revoked by the undo saga). Trips above 5,000
wait for a manager's approval: the demo sends it over ``saga.signals``, half of them as soon
as the trip exists (kept until its wait begins), half once the trip waits for it. Departures are
seconds away, so each reminder timer fires during the run. A demo schedule starts a loyalty
statement saga every five seconds on whichever coordinator claims the tick.

The run is ok when every trip ended as planned and the participants' ledger agrees
(:mod:`coordinator.demo.trip_ledger`).
"""

from __future__ import annotations

import asyncio
import json
import random
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from sqlalchemy import text

from coordinator.app import Coordinator
from coordinator.demo.participants.trip import TRIP_PARTICIPANTS, bookings, checks
from coordinator.demo.processes import ChildProcess, child_env
from coordinator.demo.runner import (
    TERMINAL,
    DemoOptions,
    DemoSummary,
    _percentile,
    _statuses,
    demo_settings,
    run_demo,
)
from coordinator.demo.trip_ledger import DESKS, PlannedTrip, check_trip_ledger
from coordinator.ops.client import start_request
from coordinator.runtime.kafka import ensure_topics, start_producer
from coordinator.store.database import create_engine
from coordinator.store.migrate import upgrade_database
from saga_defs import trip_registry
from saga_defs.trip import APPROVAL_ABOVE_CENTS, FRAUD_CHECK_ABOVE_CENTS, Approval, TripData
from service_sdk.contract import Topics, encode_headers
from service_sdk.signals import send_signal

__all__ = ["TripCluster", "TripSummary", "run_trip_demo"]

REGISTRY = "saga_defs:trip_registry"
DEMO_SCHEDULE = "demo-loyalty-statement"
REMIND_BEFORE_S = 10


@dataclass
class TripSummary(DemoSummary):
    """The demo's result with the trip's own counts: the expected split, signals, schedules."""

    expected_completed: int = 0
    expected_compensated: int = 0
    fraud_checked: int = 0
    approvals_sent: int = 0
    approvals_before_wait: int = 0
    statements_started: int = 0


@dataclass
class _Plan:
    trips: list[PlannedTrip]
    run: str
    offsets_s: dict[str, float] = field(default_factory=dict)
    """Departure of each trip, seconds after its submission."""


def _plan(options: DemoOptions) -> _Plan:
    rng = random.Random(options.seed)
    run = uuid.uuid4().hex[:8]
    trips: list[PlannedTrip] = []
    offsets: dict[str, float] = {}
    for index in range(options.orders):
        trip_id = f"{run}-trip-{index:05d}"
        roll = rng.random()
        if roll < 0.55:
            amount = rng.randint(20_000, FRAUD_CHECK_ABOVE_CENTS)
        elif roll < 0.85:
            amount = rng.randint(FRAUD_CHECK_ABOVE_CENTS + 1, APPROVAL_ABOVE_CENTS)
        else:
            amount = rng.randint(APPROVAL_ABOVE_CENTS + 1, 1_200_000)
        customer = f"{run}-customer-{index % 60:02d}"
        fate_roll = rng.random()
        trip = PlannedTrip(trip_id, customer, amount)
        if fate_roll < options.fail_rate * 0.4:
            trip = PlannedTrip(trip_id, customer, amount, "sold_out", rng.choice(DESKS))
        elif fate_roll < options.fail_rate * 0.7 and amount > FRAUD_CHECK_ABOVE_CENTS:
            trip = PlannedTrip(trip_id, f"{run}-flagged-{index}", amount, "flagged")
        elif fate_roll < options.fail_rate:
            trip = PlannedTrip(trip_id, f"{run}-nopapers-{index}", amount, "no_papers")
        trips.append(trip)
        offsets[trip_id] = REMIND_BEFORE_S + rng.uniform(1.0, 12.0)
    return _Plan(trips, run, offsets)


class TripCluster:
    """The trip demo's processes, its trips, the approvals it sends, and its checks."""

    def __init__(self, options: DemoOptions, infra: Any, console: Console) -> None:
        self.options = options
        self.infra = infra
        self.console = console
        self.plan = _plan(options)
        self.settings = demo_settings(options, infra)
        self.topics = Topics(options.topic_prefix)
        self.engine = create_engine(infra.database_url, pool_size=2)
        self.log_dir = Path(tempfile.mkdtemp(prefix="saga-demo-trip-"))
        self.children: list[ChildProcess] = []
        self.submitted_at: dict[str, float] = {}
        self.remind_at: dict[str, datetime] = {}
        self.started_at = 0.0
        self.began = datetime.now(UTC)
        self.approvals_sent = 0
        self.approvals_before_wait = 0
        self._approved: set[str] = set()

    @property
    def trip_ids(self) -> list[str]:
        """The trips' ids (and their sagas')."""
        return [t.trip_id for t in self.plan.trips]

    async def prepare(self) -> None:
        """Migrate, create and seed the participants' tables, create the topics."""
        await upgrade_database(self.settings.database.url)
        async with self.engine.begin() as conn:
            for participant in TRIP_PARTICIPANTS.values():
                await participant.install(conn)
            for desk in (bookings.flights, bookings.hotels, bookings.cars):
                await desk.seed(
                    conn, [t.trip_id for t in self.plan.trips if t.sold_out_at == desk.name]
                )
            await checks.fraud.seed(
                conn, [t.customer_id for t in self.plan.trips if t.fate == "flagged"]
            )
            await checks.tickets.seed(
                conn, [t.customer_id for t in self.plan.trips if t.fate == "no_papers"]
            )
        plan = Coordinator(self.settings, trip_registry()).topic_plan()
        await ensure_topics(self.infra.bootstrap_servers, plan)

    def _env(self, name: str) -> dict[str, str]:
        env = child_env(self.settings)
        env["SAGA_REGISTRY"] = REGISTRY
        # A statement every five seconds, beside the nightly one the definition declares.
        env["SAGA_SCHEDULES__DECLARED"] = json.dumps(
            [
                {
                    "name": DEMO_SCHEDULE,
                    "saga_type": "loyalty_statement",
                    "cron": "*/5 * * * * *",
                    "tick_field": "at",
                }
            ]
        )
        env.update(self.options.environment)
        return env

    async def start(self) -> None:
        """Start the coordinators and the participants' process."""
        for index in range(max(self.options.coordinators, 1)):
            name = f"coordinator-{index}"
            env = self._env(name)
            if index:
                env["SAGA_HTTP__PORT"] = "0"  # a fixed port (--keep) is the first one's
            child = ChildProcess(name, ["run"], env, self.log_dir)
            await child.start()
            self.children.append(child)
        args = ["participant", "trip"]
        if self.options.handler_delay_ms:
            args += ["--handler-delay-ms", str(self.options.handler_delay_ms)]
        participants = ChildProcess("trip-participants", args, self._env("trip"), self.log_dir)
        await participants.start()
        self.children.append(participants)

    def _data(self, trip: PlannedTrip, now: datetime) -> TripData:
        departs = now + timedelta(seconds=self.plan.offsets_s.get(trip.trip_id, 30.0))
        self.remind_at[trip.trip_id] = departs - timedelta(seconds=REMIND_BEFORE_S)
        return TripData(
            trip_id=trip.trip_id,
            customer_id=trip.customer_id,
            origin="ZRH",
            destination="LIS",
            departs_at=departs,
            nights=3,
            amount_cents=trip.amount_cents,
            remind_before_s=REMIND_BEFORE_S,
        )

    async def _publish(self, trips: list[PlannedTrip]) -> None:
        producer = await start_producer(self.settings.kafka)
        try:
            sends = []
            for trip in trips:
                data = self._data(trip, datetime.now(UTC))
                envelope = start_request("trip", data, saga_id=trip.trip_id, source="demo")
                self.submitted_at[trip.trip_id] = time.time()
                sends.append(
                    await producer.send(
                        self.topics.requests,
                        envelope.to_bytes(),
                        key=envelope.key(),
                        headers=encode_headers(envelope.headers()),
                    )
                )
            await asyncio.gather(*sends)
        finally:
            await producer.stop()

    async def wait_ready(self, timeout_s: float = 120.0) -> float:
        """Run one small warm-up trip through every process; returns the seconds it took."""
        began = time.monotonic()
        warmup = PlannedTrip(f"{self.plan.run}-warmup", f"{self.plan.run}-warmup", 30_000)
        self.plan.offsets_s[warmup.trip_id] = REMIND_BEFORE_S
        await self._publish([warmup])
        while True:
            status = (await _statuses(self.engine, [warmup.trip_id])).get(warmup.trip_id)
            if status is not None and status[0] in TERMINAL:
                return time.monotonic() - began
            dead = [c for c in self.children if c.returncode is not None]
            if dead or time.monotonic() - began > timeout_s:
                tails = "\n".join(f"--- {c.name}\n{c.log_tail()}" for c in self.children)
                raise RuntimeError(f"not ready after {time.monotonic() - began:.0f}s:\n{tails}")
            await asyncio.sleep(0.1)

    def _needs_approval(self) -> list[PlannedTrip]:
        # Trips refused before the wait never reach it: a signal for them would be refused.
        return [
            t
            for t in self.plan.trips
            if t.amount_cents > APPROVAL_ABOVE_CENTS and t.fate in ("ok", "no_papers")
        ]

    async def _approve(self, trips: list[PlannedTrip]) -> None:
        producer = await start_producer(self.settings.kafka)
        try:
            for trip in trips:
                await send_signal(
                    producer,
                    trip.trip_id,
                    "approval",
                    Approval(approved_by="demo-manager", note=f"{trip.amount_cents} cents"),
                    topics=self.topics,
                    message_id=f"approval-{trip.trip_id}",
                    source="demo",
                )
                self._approved.add(trip.trip_id)
                self.approvals_sent += 1
        finally:
            await producer.stop()

    async def submit(self) -> None:
        """Publish every trip (approvals follow in :meth:`approve`)."""
        self.started_at = time.time()
        await self._publish(self.plan.trips)

    async def approve(self) -> None:
        """Approve the trips that need it: half as soon as their saga exists (before their
        wait begins: the signal is kept until it does), the others once they wait.

        Never before the saga exists: a signal for an unknown saga is dead-lettered
        (``unknown_saga``), and start requests and signals travel on different topics.
        """
        needed = self._needs_approval()
        early = {t.trip_id for t in needed[::2]}
        wanted = {t.trip_id: t for t in needed if t.trip_id not in self._approved}
        if not wanted:
            return
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT saga_id, current_step FROM saga.saga_instance "
                    "WHERE saga_id = ANY(:ids) AND status = 'RUNNING'"
                ),
                {"ids": sorted(wanted)},
            )
            found = [(row.saga_id, row.current_step) for row in rows]
        waiting = [wanted[s] for s, step in found if step == "manager_approval"]
        ahead = [wanted[s] for s, step in found if step != "manager_approval" and s in early]
        if waiting or ahead:
            await self._approve([*ahead, *waiting])
            self.approvals_before_wait += len(ahead)

    async def wait(self) -> dict[str, tuple[str, datetime | None]]:
        """Approve as trips come to need it; return when every trip ended, a child died, or
        the time is up."""
        deadline = time.time() + self.options.timeout_s
        while True:
            await self.approve()
            statuses = await _statuses(self.engine, self.trip_ids)
            done = sum(1 for s, _ in statuses.values() if s in TERMINAL)
            if done >= len(self.plan.trips) or time.time() >= deadline:
                return statuses
            dead = [c for c in self.children if c.returncode is not None]
            if dead:
                for child in dead:
                    self.console.print(f"[red]{child.name} exited[/red]:\n{child.log_tail()}")
                return statuses
            await asyncio.sleep(0.25)

    async def _statements(self) -> int:
        async with self.engine.connect() as conn:
            found = await conn.scalar(
                text(
                    "SELECT count(*) FROM saga.saga_instance "
                    "WHERE saga_type = 'loyalty_statement' AND created_at >= :since"
                ),
                {"since": self.began},
            )
        return int(found or 0)

    async def summarize(self, statuses: dict[str, tuple[str, datetime | None]]) -> TripSummary:
        """Counts, latencies (submit to end), the expected split and the ledger check."""
        finished = [at for _, at in statuses.values() if at is not None]
        wall = (max(finished).timestamp() if finished else time.time()) - self.started_at
        latencies = [
            (at.timestamp() - self.submitted_at[trip_id]) * 1000
            for trip_id, (status, at) in statuses.items()
            if status in TERMINAL and at is not None
        ]
        planned = {t.trip_id: t for t in self.plan.trips}
        async with self.engine.connect() as conn:
            report = await check_trip_ledger(
                conn,
                {trip_id: status for trip_id, (status, _) in statuses.items()},
                planned,
                self.remind_at,
                statements_since=self.began,
            )
        counts = [status for status, _ in statuses.values()]
        terminal = sum(1 for s in counts if s in TERMINAL)
        total = len(self.plan.trips)
        expected_completed = sum(1 for t in self.plan.trips if t.expected == "COMPLETED")
        return TripSummary(
            orders=total,
            completed=counts.count("COMPLETED"),
            compensated=counts.count("COMPENSATED"),
            failed=counts.count("FAILED"),
            stuck=total - terminal,
            wall_s=round(wall, 3),
            sagas_per_s=round(total / wall, 1) if wall > 0 else 0.0,
            p50_ms=round(_percentile(latencies, 50), 1),
            p95_ms=round(_percentile(latencies, 95), 1),
            p99_ms=round(_percentile(latencies, 99), 1),
            ledger_ok=report.ok,
            broker=self.infra.broker,
            ledger_problems=list(report.problems),
            expected_completed=expected_completed,
            expected_compensated=total - expected_completed,
            fraud_checked=sum(1 for t in self.plan.trips if t.screened),
            approvals_sent=self.approvals_sent,
            approvals_before_wait=self.approvals_before_wait,
            statements_started=await self._statements(),
        )

    async def close(self) -> None:
        """Stop every child (SIGTERM, then SIGKILL after a grace period) and the engine."""
        for child in self.children:
            await child.stop()
        await self.engine.dispose()


async def run_trip_demo(
    options: DemoOptions, *, keep: tuple[int, str, asyncio.Event] | None = None
) -> TripSummary:
    """Run the trip demo and return its summary (the table goes to stderr when ``quiet``);
    ``keep`` as for :func:`~coordinator.demo.runner.run_demo` (the first coordinator's
    console)."""
    summary = await run_demo(options, keep=keep, cluster_type=TripCluster)
    assert isinstance(summary, TripSummary)
    return summary
