"""Debian's Chromium driven by Playwright, for the console's browser tests.

Playwright never downloads a browser here: it launches ``/usr/bin/chromium`` (installed by
``tests/bootstrap.sh``) with the flags this machine's closed network needs, on a fresh profile.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from playwright.async_api import BrowserContext, async_playwright

__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "chromium"]

CHROMIUM = Path("/usr/bin/chromium")

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # Without these Chromium keeps calling home, and a closed network refuses it many times
    # a second (slow starts, noisy logs).
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextlib.asynccontextmanager
async def chromium(profile: Path) -> AsyncIterator[BrowserContext]:
    """A browser context of Debian's Chromium on the fresh user-data-dir ``profile``."""
    if not CHROMIUM.exists():  # noqa: ASYNC240 (one stat, before anything starts)
        raise RuntimeError(f"{CHROMIUM} is missing: run tests/bootstrap.sh (as root)")
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            yield context
        finally:
            await context.close()
