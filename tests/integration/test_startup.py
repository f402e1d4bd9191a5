"""A coordinator starts while Kafka is unreachable: it serves /ready as 503, waits Kafka out,
becomes ready once Kafka answers, and a stop while it waits ends it at once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx

from coordinator.app import Coordinator
from coordinator.config import Settings
from coordinator.devstack.ports import free_port
from saga_defs import default_registry
from tests.support.waiting import eventually


@contextlib.asynccontextmanager
async def _forwarder(port: int, target: str) -> AsyncIterator[None]:
    """Listen on ``port`` and pass every connection through to ``target`` (host:port)."""
    host, target_port = target.rsplit(":", 1)

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(host, int(target_port))
        await asyncio.gather(pipe(client_r, server_w), pipe(server_r, client_w))

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    try:
        yield
    finally:
        server.close()


async def _ready(port: int) -> int:
    async with httpx.AsyncClient() as client:
        try:
            return (await client.get(f"http://127.0.0.1:{port}/ready")).status_code
        except httpx.TransportError:
            return 0


async def test_a_coordinator_waits_for_kafka_and_becomes_ready_when_it_answers(
    coordinator_settings: Settings, kafka: Any
) -> None:
    gate = free_port()
    settings = coordinator_settings.model_copy(deep=True)
    settings.kafka.bootstrap_servers = f"127.0.0.1:{gate}"  # nothing listens there yet
    coordinator = Coordinator(settings, default_registry())
    stop = asyncio.Event()
    serving = asyncio.create_task(coordinator.serve(stop))
    try:

        async def http_port() -> int | None:
            http = coordinator.http
            return http.port if http is not None and http.port else None

        port = await eventually(http_port, what="the HTTP API to listen")
        assert await eventually(lambda: _ready(port)) == 503, "ready without Kafka"
        assert not serving.done(), "the coordinator gave up while Kafka was down"
        async with _forwarder(gate, kafka.bootstrap_servers):

            async def ready() -> bool:
                return await _ready(port) == 200

            await eventually(ready, timeout=60, what="readiness once Kafka answers")
            stop.set()
            await asyncio.wait_for(serving, 30)
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await serving
        await coordinator.stop()


async def test_a_stop_while_waiting_for_kafka_ends_the_coordinator(
    coordinator_settings: Settings,
) -> None:
    settings = coordinator_settings.model_copy(deep=True)
    settings.kafka.bootstrap_servers = f"127.0.0.1:{free_port()}"
    coordinator = Coordinator(settings, default_registry())
    stop = asyncio.Event()
    serving = asyncio.create_task(coordinator.serve(stop))
    try:
        await eventually(lambda: coordinator.http is not None and coordinator.http.port)
        stop.set()
        await asyncio.wait_for(serving, 10)
    finally:
        await coordinator.stop()
    assert serving.exception() is None
