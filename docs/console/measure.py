"""Measure the console's list and search with many sagas in the store.

Fills the database of a running coordinator (e.g. ``saga dev``) with ``--sagas`` synthetic
sagas (six history rows each; 10% COMPENSATED, 2% FAILED, 0.5% RUNNING without a deadline, the
rest COMPLETED; a running share kept under the admission cap), then times the pages over HTTP, as a
browser would fetch them, and prints the median and 95th percentile of each::

    .venv/bin/python docs/console/measure.py --base http://127.0.0.1:8080 \\
        --token "$SAGA_HTTP__TOKEN" --database-url "$SAGA_DATABASE__URL" --sagas 100000
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import httpx
from sqlalchemy import text

from coordinator.store.database import create_engine

_FILL = """
INSERT INTO saga.saga_instance (saga_id, saga_type, definition_version, status, current_step,
    attempt, completed_steps, compensated_steps, data, failure_reason, version, epoch,
    created_at, updated_at, completed_at, business_keys)
SELECT 'bulk-' || lpad(n::text, 7, '0'), 'order', 1,
    CASE WHEN n % 200 = 0 THEN 'RUNNING' WHEN n % 50 = 1 THEN 'FAILED'
         WHEN n % 10 = 7 THEN 'COMPENSATED' ELSE 'COMPLETED' END,
    CASE WHEN n % 200 = 0 THEN 'schedule_shipping' END, 1,
    ARRAY['reserve_inventory'], ARRAY[]::text[],
    jsonb_build_object('order_id', 'bulk-order-' || n, 'customer_id', 'bulk-customer-' || n % 5000,
        'amount_cents', 1000 + n % 900, 'items', jsonb_build_array(jsonb_build_object(
        'sku', 'sku-' || n % 40, 'quantity', 1 + n % 3))),
    CASE WHEN n % 10 = 7 THEN 'charge_payment: card declined'
         WHEN n % 50 = 1 THEN 'reserve_inventory: compensation failed' END, 5, 0,
    now() - make_interval(secs => (:n - n) * 2), now() - make_interval(secs => (:n - n) * 2),
    CASE WHEN n % 200 <> 0 THEN now() - make_interval(secs => (:n - n) * 2) END,
    ARRAY['order_id=bulk-order-' || n, 'customer_id=bulk-customer-' || n % 5000]
FROM generate_series(1, :n) AS n
ON CONFLICT DO NOTHING
"""

_HISTORY = """
INSERT INTO saga.saga_history (saga_id, at, kind, step, detail)
SELECT saga_id, created_at, kind, 'reserve_inventory', '{}'::jsonb
FROM saga.saga_instance,
    unnest(ARRAY['started','command_sent','step_succeeded','command_sent','step_succeeded',
                 'completed']) AS kind
WHERE saga_id LIKE 'bulk-%'
"""


async def fill(database_url: str, sagas: int) -> None:
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.begin() as conn:
            have = await conn.scalar(
                text("SELECT count(*) FROM saga.saga_instance WHERE saga_id LIKE 'bulk-%'")
            )
            if have < sagas:
                await conn.execute(text(_FILL), {"n": sagas})
                await conn.execute(text(_HISTORY))
        # What autovacuum does soon after a bulk load: statistics, and the visibility map
        # that lets the per-status counts scan the index alone.
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text("VACUUM ANALYZE saga.saga_instance"))
            await conn.execute(text("VACUUM ANALYZE saga.saga_history"))
    finally:
        await engine.dispose()


async def timed(client: httpx.AsyncClient, path: str, runs: int) -> tuple[float, float, int]:
    samples = []
    status = 0
    await client.get(path)  # warm the connection and the plan cache
    for _ in range(runs):
        began = time.perf_counter()
        answer = await client.get(path)
        samples.append((time.perf_counter() - began) * 1000)
        status = answer.status_code
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.95) - 1], status


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", default="http://127.0.0.1:8080")
    parser.add_argument("--token", required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--sagas", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args()
    began = time.perf_counter()
    await fill(args.database_url, args.sagas)
    print(f"store filled ({args.sagas:,} bulk sagas) in {time.perf_counter() - began:.1f} s")
    middle = f"bulk-order-{args.sagas // 2}"
    pages = {
        "console: sagas, newest 50 + counts": "/ui/sagas",
        "console: FAILED only": "/ui/sagas?status=FAILED",
        "console: by order id (business key)": f"/ui/sagas?key=order_id%3D{middle}",
        "console: by customer id (20 sagas)": "/ui/sagas?key=customer_id%3Dbulk-customer-7",
        "console: failure reason contains": "/ui/sagas?reason=declined",
        "console: page 200 (offset 9,950)": "/ui/sagas?offset=9950",
        "console: one saga": f"/ui/sagas/bulk-{args.sagas // 2:07d}",
        "API: GET /sagas?key=order_id=...": f"/sagas?key=order_id%3D{middle}",
        "API: GET /sagas?limit=50": "/sagas?limit=50",
    }
    async with httpx.AsyncClient(base_url=args.base, timeout=30) as client:
        login = await client.post(
            "/ui/login", data={"name": "bench", "token": args.token, "next": "/ui/sagas"}
        )
        assert login.status_code == 303, login.text
        # The console cookie is Secure: httpx keeps it for http://127.0.0.1 only if told so.
        client.cookies.set("saga_console", login.cookies["saga_console"])
        client.headers["Authorization"] = f"Bearer {args.token}"
        print(f"{'page':<40} {'median ms':>10} {'p95 ms':>8}  status")
        for name, path in pages.items():
            median, p95, status = await timed(client, path, args.runs)
            print(f"{name:<40} {median:>10.1f} {p95:>8.1f}  {status}")


if __name__ == "__main__":
    asyncio.run(main())
