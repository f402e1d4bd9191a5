"""The long-running commands run on uvloop's event loop."""

from __future__ import annotations

import asyncio

import uvloop

from coordinator.cli.common import run_service


async def _loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


def test_a_service_runs_on_uvloop() -> None:
    assert isinstance(run_service(_loop()), uvloop.Loop)
