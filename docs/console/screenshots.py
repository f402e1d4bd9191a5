"""Take the README's console screenshots from a running ``saga dev``.

Run ``saga dev`` (its orders done), stop its ``shipping`` participant (so new sagas wait at
their last step, miss a deadline and retry), then::

    .venv/bin/python docs/console/screenshots.py --base http://127.0.0.1:8080 \\
        --token "$SAGA_HTTP__TOKEN" --bootstrap "$SAGA_KAFKA__BOOTSTRAP_SERVERS"

It starts three orders over the API, dead-letters one malformed reply, and saves PNGs of each
page next to this file, taken with the same Playwright and Debian Chromium as the browser tests.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from pathlib import Path

import httpx
from aiokafka import AIOKafkaProducer

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.browser import chromium

HERE = Path(__file__).parent


async def _orders(base: str, token: str) -> list[str]:
    run = uuid.uuid4().hex[:6]
    ids = []
    auth = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, timeout=10) as api:
        # A stocked SKU and a paying customer: those of an order that completed.
        done = await api.get("/sagas", params={"status": "COMPLETED", "limit": 50}, headers=auth)
        model = next(s["data"] for s in done.json()["items"] if "warmup" not in s["saga_id"])
        for n in range(3):
            order = {
                "order_id": f"web-{run}-{n}",
                "customer_id": model["customer_id"],
                "items": [{"sku": model["items"][0]["sku"], "quantity": n + 1}],
                "amount_cents": 1_990 * (n + 1),
            }
            answer = await api.post(
                "/sagas/order",
                json=order,
                headers={**auth, "Idempotency-Key": f"web-{run}-{n}"},
            )
            answer.raise_for_status()
            ids.append(answer.json()["saga_id"])
    return ids


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", default="http://127.0.0.1:8080")
    parser.add_argument("--token", required=True)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--wait-s", type=float, default=40.0, help="for a deadline to pass")
    args = parser.parse_args()
    base = args.base
    running = await _orders(base, args.token)
    producer = AIOKafkaProducer(bootstrap_servers=args.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait("saga.replies", b'{"not": "an envelope"', key=b"web")
    finally:
        await producer.stop()
    async with chromium(Path("/tmp") / f"saga-shots-{uuid.uuid4().hex[:6]}") as browser:
        page = await browser.new_page()
        await page.goto(f"{base}/ui/sagas")
        await page.fill("input[name=name]", "alice")
        await page.screenshot(path=HERE / "login.png")
        await page.fill("input[name=token]", args.token)
        await page.click("button[type=submit]")
        await page.wait_for_selector("#saga-table")
        await page.screenshot(path=HERE / "sagas.png", full_page=True)
        # A saga that compensated: payment declined.
        await page.goto(f"{base}/ui/sagas?status=COMPENSATED&reason=declined")
        await page.locator("#saga-table tbody tr a").first.click()
        await page.wait_for_selector("svg.gantt")
        await page.screenshot(path=HERE / "saga-compensated.png", full_page=True)
        # A running saga whose last participant is silent: retries, a pending deadline.
        await asyncio.sleep(args.wait_s)
        await page.goto(f"{base}/ui/sagas/{running[0]}")
        await page.select_option("#action-select", "abort")
        await page.fill("#action-reason", "customer cancelled by phone")
        await page.click("#preview-button")
        await page.wait_for_selector("#dry-run")
        await page.screenshot(path=HERE / "saga-running-abort-preview.png", full_page=True)
        await page.goto(f"{base}/ui/dead-letters")
        await page.wait_for_selector("#dlq-table")
        await page.locator("#dlq-table tbody input[type=checkbox]:not([disabled])").first.check()
        await page.click("#replay-preview-button")
        await page.wait_for_selector("#replay-dry-run")
        await page.screenshot(path=HERE / "dead-letters.png", full_page=True)
        await page.locator("#dlq-table tbody a").first.click()
        await page.wait_for_selector("#dlq-body")
        await page.screenshot(path=HERE / "dead-letter.png", full_page=True)


if __name__ == "__main__":
    asyncio.run(main())
