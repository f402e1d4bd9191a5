"""The console's schedules page in a real Chromium, over a coordinator on real Kafka and
PostgreSQL: the schedule with its next and last fired tick, paused and resumed by an operator.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import BrowserContext, expect
from pydantic import SecretStr

from coordinator.app import Coordinator
from coordinator.config import ScheduleSettings, Settings
from coordinator.core.clock import FakeClock
from coordinator.core.schedule import schedule_saga_id
from tests.integration.test_schedules import NAME, REGISTRY, _declared, _until_started
from tests.support.browser import chromium

TOKEN = "console-token"


@pytest.fixture
async def console(
    coordinator_settings: Settings, running_coordinator: Any
) -> AsyncIterator[tuple[Coordinator, str, FakeClock]]:
    coordinator_settings.http.token = SecretStr(TOKEN)
    coordinator_settings.http.console.refresh_interval_s = 0.5
    coordinator_settings.schedules = ScheduleSettings(interval_s=0.05)
    clock = FakeClock(datetime.now(UTC).replace(microsecond=500_000))
    async with running_coordinator(coordinator_settings, REGISTRY, clock) as coordinator:
        assert coordinator.http is not None
        await coordinator.http.wait_started()
        await _declared(coordinator)
        yield coordinator, f"http://127.0.0.1:{coordinator.http.port}", clock


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[BrowserContext]:
    async with chromium(tmp_path / "profile") as context:
        yield context


async def test_an_operator_sees_the_schedules_ticks_and_pauses_and_resumes_it(
    console: tuple[Coordinator, str, FakeClock], browser: BrowserContext
) -> None:
    coordinator, base, clock = console
    clock.advance(timedelta(seconds=1))
    tick = clock.now().replace(microsecond=0)
    await _until_started(coordinator, [tick])

    page = await browser.new_page()
    await page.goto(f"{base}/ui/schedules")
    await expect(page).to_have_url(re.compile(r"/ui/login\?next="))
    await page.fill("input[name=name]", "carol")
    await page.fill("input[name=token]", TOKEN)
    await page.click("button[type=submit]")
    await expect(page).to_have_url(re.compile(r"/ui/schedules$"))

    row = page.locator(f"tr[data-schedule='{NAME}']")
    await expect(row.locator("td").nth(2)).to_contain_text("* * * * * *")
    await expect(row.locator("td").nth(2)).to_contain_text("Every second")
    await expect(row.locator(".state")).to_contain_text("active")
    last = row.locator(".last a")
    await expect(last).to_have_text(schedule_saga_id(NAME, tick))
    next_tick = (tick + timedelta(seconds=1)).strftime("%Y-%m-%d %H:%M:%S")
    await expect(row.locator(".next")).to_contain_text(next_tick)

    # The page refreshes itself: the next tick's saga shows up without a reload.
    clock.advance(timedelta(seconds=1))
    later = clock.now().replace(microsecond=0)
    await expect(last).to_have_text(schedule_saga_id(NAME, later), timeout=15_000)

    await row.locator("input[name=reason]").fill("quarter-end freeze")
    await row.locator(".pause-button").click()
    await expect(page.locator("#schedule-notice")).to_have_text(f"Schedule {NAME} paused.")
    await expect(row.locator(".state")).to_contain_text("paused")
    await expect(row.locator(".state")).to_contain_text("by carol")
    await expect(row.locator(".state")).to_contain_text("quarter-end freeze")
    await expect(row.locator(".next")).to_have_text("-")
    (view,) = await coordinator.schedule_admin.list_schedules()
    assert (view.paused, view.paused_by) == (True, "carol")

    await row.locator(".resume-button").click()
    await expect(page.locator("#schedule-notice")).to_have_text(f"Schedule {NAME} resumed.")
    await expect(row.locator(".state")).to_contain_text("active")
    await last.click()
    saga_id = urllib.parse.quote(schedule_saga_id(NAME, later), safe="")
    await expect(page).to_have_url(re.compile(re.escape(f"/ui/sagas/{saga_id}") + "$"))
