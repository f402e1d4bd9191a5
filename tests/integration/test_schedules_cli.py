"""``saga schedules list | pause | resume`` against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

from typer.testing import CliRunner, Result

from coordinator.cli.main import app
from coordinator.config import ScheduleSettings
from coordinator.core.clock import FakeClock
from coordinator.core.schedule import scheduled_sagas
from coordinator.runtime.scheduler import Scheduler
from coordinator.store.database import create_engine
from coordinator.store.migrate import upgrade_database
from coordinator.store.saga_store import SagaStore
from service_sdk import Topics
from tests.integration.test_schedules import REGISTRY, TallySaga


async def _saga(database_url: str, *args: str) -> Result:
    env = {"SAGA_DATABASE__URL": database_url, "USER": "dana", "COLUMNS": "220"}
    return await asyncio.to_thread(CliRunner().invoke, app, ["schedules", *args], env=env)


async def test_an_operator_lists_pauses_and_resumes_a_schedule(database_url: str) -> None:
    await upgrade_database(database_url)
    empty = await _saga(database_url, "list")
    assert empty.exit_code == 0, empty.output
    assert "no schedules" in empty.output

    engine = create_engine(database_url, pool_size=1)
    clock = FakeClock(datetime.now(UTC).replace(microsecond=500_000))
    scheduler = Scheduler(
        SagaStore(engine),
        REGISTRY,
        Topics(""),
        clock,
        ScheduleSettings(),
        scheduled_sagas([("tally", TallySaga)]),
    )
    try:
        await scheduler.declare()
        clock.advance(timedelta(seconds=1))
        (fired,) = (await scheduler.fire_once()).fired
    finally:
        await engine.dispose()

    listed = await _saga(database_url, "list", "--json")
    assert listed.exit_code == 0, listed.output
    (item,) = json.loads(listed.stdout)
    assert (item["name"], item["paused"], item["last_saga_id"]) == (
        "tally-every-second",
        False,
        fired.saga_id,
    )
    table = await _saga(database_url, "list")
    assert "tally-every-second" in table.output
    assert "Every second" in table.output

    paused = await _saga(database_url, "pause", "tally-every-second", "--reason", "freeze")
    assert paused.exit_code == 0, paused.output
    assert "paused by dana" in paused.output
    shown = json.loads((await _saga(database_url, "list", "--json")).stdout)[0]
    assert (shown["paused"], shown["pause_reason"], shown["next_tick_at"]) == (True, "freeze", None)

    resumed = await _saga(database_url, "resume", "tally-every-second", "--actor", "eve")
    assert resumed.exit_code == 0, resumed.output
    assert "resumed by eve; next tick" in resumed.output

    missing = await _saga(database_url, "pause", "nope", "--reason", "x")
    assert missing.exit_code == 1
    assert "no schedule named 'nope'" in missing.output
