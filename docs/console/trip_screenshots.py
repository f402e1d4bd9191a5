"""Take the README's screenshots of the saga shapes from a running ``saga demo --saga trip
--keep``: a trip whose parallel booking unwound, a trip that waited for its approval and
awarded points through a child saga, that child, and the schedules page.

Run the demo with ``--keep`` (it prints the console's address and token), then::

    .venv/bin/python docs/console/trip_screenshots.py --base http://127.0.0.1:8080 --token TOKEN

It saves PNGs next to this file, taken with the same Playwright and Debian Chromium as the
browser tests.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.browser import chromium

HERE = Path(__file__).parent


async def _pick(base: str, token: str) -> tuple[str, str, str]:
    """A trip that compensated inside its parallel group, a completed trip that was approved
    and has a child saga, and that child."""
    auth = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, timeout=10, headers=auth) as api:

        async def trips(status: str) -> list[dict[str, Any]]:
            answer = await api.get(
                "/sagas", params={"status": status, "saga_type": "trip", "limit": 200}
            )
            answer.raise_for_status()
            items: list[dict[str, Any]] = answer.json()["items"]
            return items

        unwound = completed = child = None
        for item in await trips("COMPENSATED"):
            reason = item.get("failure_reason") or ""
            if "book_" in reason or "rent_car" in reason:
                unwound = item["saga_id"]
                break
        for item in await trips("COMPLETED"):
            detail = (await api.get(f"/sagas/{item['saga_id']}")).json()
            kinds = {entry["kind"] for entry in detail.get("history", [])}
            if detail.get("children") and "signal_received" in kinds:
                completed = item["saga_id"]
                child = detail["children"][0]["saga_id"]
                break
    if unwound is None or completed is None or child is None:
        raise SystemExit("no trip of each kind yet: let the demo finish first")
    return unwound, completed, child


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", default="http://127.0.0.1:8080")
    parser.add_argument("--token", required=True)
    args = parser.parse_args()
    base = args.base
    unwound, completed, child = await _pick(base, args.token)
    async with chromium(Path("/tmp") / f"saga-shots-{uuid.uuid4().hex[:6]}") as browser:
        page = await browser.new_page()
        await page.goto(f"{base}/ui/sagas")
        await page.fill("input[name=name]", "alice")
        await page.fill("input[name=token]", args.token)
        await page.click("button[type=submit]")
        await page.wait_for_selector("#saga-table")
        for saga_id, name in (
            (unwound, "trip-parallel-unwound.png"),
            (completed, "trip-approved-with-child.png"),
            (child, "trip-child-saga.png"),
        ):
            await page.goto(f"{base}/ui/sagas/{saga_id}")
            await page.wait_for_selector("svg.gantt")
            await page.screenshot(path=HERE / name, full_page=True)
        await page.goto(f"{base}/ui/schedules")
        await page.wait_for_load_state("networkidle")
        await page.screenshot(path=HERE / "schedules.png", full_page=True)


if __name__ == "__main__":
    asyncio.run(main())
