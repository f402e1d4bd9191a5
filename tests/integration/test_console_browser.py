"""The web console in a real Chromium against a running coordinator on real Kafka and
PostgreSQL: log in, find a saga by its order id, read its timeline, abort one after its dry
run, replay a dead letter, and watch pages refresh as sagas progress.

The test plays the participants (it answers commands with :func:`participant_reply`), so it
decides when each saga moves.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import BrowserContext, Page, expect
from pydantic import SecretStr
from sqlalchemy import text

from coordinator.app import Coordinator
from coordinator.config import Settings
from coordinator.core.state import SagaStatus
from saga_defs import OrderData
from saga_defs.order import OrderItem
from service_sdk import Envelope, Topics
from tests.support.browser import chromium
from tests.support.replies import participant_reply
from tests.support.waiting import eventually

TOKEN = "console-token"
STEPS = ("reserve_inventory", "charge_payment", "schedule_shipping")
PAYLOADS: dict[str, dict[str, Any]] = {
    "reserve_inventory": {"reservation_id": "r-1"},
    "charge_payment": {"charge_id": "ch-1"},
    "schedule_shipping": {"shipment_id": "sh-1"},
}


def _order(order_id: str) -> OrderData:
    return OrderData(
        order_id=order_id,
        customer_id="c-1",
        items=(OrderItem(sku="sku-1", quantity=1),),
        amount_cents=900,
    )


@pytest.fixture
async def console(
    coordinator_settings: Settings, running_coordinator: Any
) -> AsyncIterator[tuple[Coordinator, str]]:
    """A running coordinator with a token, pages refreshing every half second; its base URL."""
    coordinator_settings.http.token = SecretStr(TOKEN)
    coordinator_settings.http.console.refresh_interval_s = 0.5
    async with running_coordinator(coordinator_settings) as coordinator:
        assert coordinator.http is not None
        await coordinator.http.wait_started()
        yield coordinator, f"http://127.0.0.1:{coordinator.http.port}"


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[BrowserContext]:
    async with chromium(tmp_path / "profile") as context:
        yield context


async def _log_in(page: Page, base: str, *, name: str = "alice", token: str = TOKEN) -> None:
    await page.goto(f"{base}/ui/sagas")
    await expect(page).to_have_url(re.compile(r"/ui/login\?next="))
    await page.fill("input[name=name]", name)
    await page.fill("input[name=token]", token)
    await page.click("button[type=submit]")


async def _answer(
    coordinator: Coordinator, topic_reader: Any, send_envelope: Any, saga_id: str, step: str
) -> None:
    """Answer the saga's command of ``step`` with success, as its participant would."""
    topics = Topics(coordinator.settings.kafka.topic_prefix)
    service = {"reserve_inventory": "inventory", "charge_payment": "payment"}.get(step, "shipping")
    async with topic_reader(topics.commands(service)) as reader:
        seen: list[Envelope] = []

        async def command() -> Envelope:
            seen.extend(await reader.envelopes(1))
            found = [e for e in seen if e.saga_id == saga_id and e.step == step]
            assert found, f"no {step} command of {saga_id} yet"
            return found[0]

        sent = await eventually(command, timeout=30, interval=0, what=f"{step} of {saga_id}")
    await send_envelope(topics.replies, participant_reply(sent, payload=PAYLOADS[step]))


async def _status(coordinator: Coordinator, saga_id: str) -> SagaStatus:
    async with coordinator.store.engine.connect() as conn:
        saga = await coordinator.store.select_saga(conn, saga_id)
    assert saga is not None
    return saga.status


async def test_login_needs_the_token_and_sets_a_safe_cookie(
    console: tuple[Coordinator, str], browser: BrowserContext
) -> None:
    _, base = console
    page = await browser.new_page()
    await _log_in(page, base, token="wrong-token")
    await expect(page.locator("#login-error")).to_contain_text("not valid")
    assert await browser.cookies() == []
    # Pages stay closed without a session.
    await page.goto(f"{base}/ui/dead-letters")
    await expect(page).to_have_url(re.compile(r"/ui/login"))

    await _log_in(page, base)
    await expect(page).to_have_url(f"{base}/ui/sagas")
    await expect(page.locator("#actor")).to_have_text("alice")
    (cookie,) = await browser.cookies()
    assert (cookie["httpOnly"], cookie["secure"], cookie["sameSite"]) == (True, True, "Strict")
    assert TOKEN not in cookie["value"]
    # Script on the page cannot read it.
    assert "saga_console" not in await page.evaluate("document.cookie")


async def test_find_a_saga_by_order_id_and_watch_its_timeline_fill_in(
    console: tuple[Coordinator, str],
    browser: BrowserContext,
    topic_reader: Any,
    send_envelope: Any,
) -> None:
    coordinator, base = console
    await coordinator.client.start("order", _order("o-other"), saga_id="s-other")
    saga_id = await coordinator.client.start("order", _order("o-42"), saga_id="s-42")
    page = await browser.new_page()
    await _log_in(page, base)
    await expect(page.locator("#saga-table tbody tr")).to_have_count(2)
    await expect(page.locator("#results")).to_have_attribute("data-refreshing", "yes")

    # The list refreshes by itself: a marker set in the page survives, so no reload happened.
    await page.evaluate("window.notReloaded = true")
    await _answer(coordinator, topic_reader, send_envelope, "s-other", "reserve_inventory")
    other = page.locator('tr[data-saga-id="s-other"]')
    await expect(other).to_contain_text("charge_payment", timeout=15_000)
    assert await page.evaluate("window.notReloaded === true")

    await page.fill("input[name=key]", "order_id=o-42")
    await page.click("#filters button[type=submit]")
    rows = page.locator("#saga-table tbody tr")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_have_attribute("data-saga-id", saga_id)
    await rows.first.locator("a").click()
    await expect(page.locator("#saga-status")).to_have_text("RUNNING")
    await expect(page.locator("#deadline .countdown")).to_have_text(re.compile(r"\d+ s|due"))

    # The saga page follows the saga as its participants answer, without a reload.
    await page.evaluate("window.notReloaded = true")
    for step in STEPS:
        await _answer(coordinator, topic_reader, send_envelope, saga_id, step)
    await expect(page.locator("#saga-status")).to_have_text("COMPLETED", timeout=15_000)
    assert await page.evaluate("window.notReloaded === true")
    bars = page.locator("svg.gantt g.bar")
    await expect(bars).to_have_count(3)
    assert await bars.evaluate_all("bs => bs.map(b => b.dataset.label)") == [
        f"{step} #1" for step in STEPS
    ]
    assert await bars.evaluate_all("bs => bs.map(b => b.dataset.outcome)") == ["succeeded"] * 3
    await expect(page.locator("ol.history li")).to_have_count(8)
    await expect(page.locator("#live")).not_to_have_attribute("hx-trigger", re.compile("."))


async def test_abort_shows_the_dry_run_then_aborts_as_the_logged_in_actor(
    console: tuple[Coordinator, str], browser: BrowserContext
) -> None:
    coordinator, base = console
    saga_id = await coordinator.client.start("order", _order("o-7"), saga_id="s-7")
    page = await browser.new_page()
    await _log_in(page, base, name="bob")
    await page.goto(f"{base}/ui/sagas/{saga_id}")
    await page.select_option("#action-select", "abort")
    await page.fill("#action-reason", "customer cancelled")
    await page.click("#preview-button")
    preview = page.locator("#dry-run")
    await expect(preview).to_contain_text("RUNNING → COMPENSATING")
    # The exact command a confirm would send: undo the reservation that may have happened.
    await expect(preview.locator("tr.cmd")).to_have_count(1)
    await expect(preview.locator("tr.cmd")).to_contain_text("inventory.commands")
    assert await _status(coordinator, saga_id) is SagaStatus.RUNNING, "the dry run changed it"

    await page.click("#confirm-button")
    await expect(page.locator("#done")).to_contain_text("abort done")
    await expect(page.locator("#saga-status")).to_have_text("COMPENSATING")
    await expect(page.locator("#failure-reason")).to_contain_text("aborted by bob")
    await expect(page.locator("li.h-operator_action")).to_contain_text("by bob: abort")
    assert await _status(coordinator, saga_id) is SagaStatus.COMPENSATING
    timeline = await coordinator.operator.show(saga_id)
    (action,) = [r for r in timeline.history if r.kind == "operator_action"]
    assert (action.detail["actor"], action.detail["reason"]) == ("bob", "customer cancelled")


async def test_a_dead_letter_is_replayed_after_its_dry_run_and_marked(
    console: tuple[Coordinator, str], browser: BrowserContext, producer: Any
) -> None:
    coordinator, base = console
    topics = Topics(coordinator.settings.kafka.topic_prefix)
    sent = await producer.send_and_wait(topics.replies, b"{not json", key=b"k")
    dlq = Topics.dead_letters(topics.replies)
    position = f"{dlq}|0|0"
    page = await browser.new_page()
    await _log_in(page, base)

    async def listed() -> bool:
        await page.goto(f"{base}/ui/dead-letters")
        return await page.locator(f'tr[data-position="{position}"]').count() == 1

    await eventually(listed, timeout=30, what="the dead letter in the console")
    await expect(page.locator("#dlq-counts")).to_contain_text("malformed")
    row = page.locator(f'tr[data-position="{position}"]')
    await row.locator("a").first.click()
    await expect(page.locator("#dlq-body")).to_have_text("{not json")
    await expect(page.locator("#dlq-headers")).to_contain_text(f"{topics.replies}")
    await page.go_back()

    await row.locator("input[type=checkbox]").check()
    await page.click("#replay-preview-button")
    await expect(page.locator("#would-replay")).to_have_text("1")
    await page.click("#confirm-replay")
    await expect(page.locator("#replayed-notice")).to_contain_text("Replayed 1")
    await expect(row.locator(".replayed-badge")).to_have_text("replayed")
    await expect(row.locator("input[type=checkbox]")).to_be_disabled()
    # The replayed record went back to its topic (where it fails again: a new dead letter).
    async with coordinator.store.engine.connect() as conn:
        replays = (await conn.execute(text("SELECT actor FROM saga.dead_letter_replay"))).all()
    assert [r.actor for r in replays] == ["alice"]
    assert sent.offset >= 0
