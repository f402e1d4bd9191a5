"""``saga dev``: it serves the console and the API over the example participants, and what
must hold across restarts (PostgreSQL's data directory, the console token) does."""

from __future__ import annotations

import asyncio
import io
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from rich.console import Console
from sqlalchemy import text

from coordinator.demo.dev_server import DevOptions, dev_token, run_dev
from coordinator.devstack import PrerequisiteMissingError
from coordinator.devstack.persistent_postgres import PersistentPostgres
from coordinator.devstack.ports import free_port
from coordinator.store.database import create_engine
from tests.support.waiting import eventually


async def _query(url: str, statement: str) -> list[str]:
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            result = await conn.execute(text(statement))
            return [str(row[0]) for row in result] if result.returns_rows else []
    finally:
        await engine.dispose()


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A directory PostgreSQL's account can reach also when the tests run as root (pytest's
    tmp_path is closed to other accounts)."""
    path = Path(tempfile.mkdtemp(prefix="saga-dev-test-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_the_database_outlives_a_restart_and_the_token_stays(
    data_dir: Path, tmp_path: Path
) -> None:
    directory = data_dir / "postgres"
    first = PersistentPostgres(directory)
    assert not first.initialized
    async with first:
        await _query(first.url, "CREATE TABLE kept (v text)")
        await _query(first.url, "INSERT INTO kept VALUES ('still here')")
    assert first.initialized, "stopping removed the data directory"
    again = PersistentPostgres(directory)
    async with again:
        assert await _query(again.url, "SELECT v FROM kept") == ["still here"]

    token = dev_token(tmp_path)
    assert dev_token(tmp_path) == token
    assert len(token) >= 20
    assert stat.S_IMODE((tmp_path / "token").stat().st_mode) == 0o600


async def test_a_data_directory_the_server_cannot_reach_is_a_clear_error(tmp_path: Path) -> None:
    server = PersistentPostgres(tmp_path / "postgres")
    if server._os_user() is None:
        pytest.skip("not root: PostgreSQL runs as this account, which reaches tmp_path")
    with pytest.raises(PrerequisiteMissingError, match="cannot enter"):
        await server.start()


@pytest.mark.timeout(300)
async def test_saga_dev_runs_the_orders_and_serves_the_console(data_dir: Path) -> None:
    port = free_port()
    out = io.StringIO()
    stop = asyncio.Event()
    options = DevOptions(data_dir=data_dir, port=port, orders=3, rate=20.0, fail_rate=0.0)
    running = asyncio.create_task(run_dev(options, stop, Console(file=out, width=200)))
    token = dev_token(data_dir)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as api:

            async def finished() -> bool:
                assert not running.done(), out.getvalue()
                try:
                    answer = await api.get(
                        "/sagas",
                        params={"status": "COMPLETED"},
                        headers={"Authorization": f"Bearer {token}"},
                    )
                except httpx.ConnectError:
                    return False  # the coordinator is not serving yet
                # The warm-up order and the three of the trickle.
                return answer.status_code == 200 and len(answer.json()["items"]) == 4

            await eventually(finished, timeout=240, interval=1, what="the dev orders completed")
            login = await api.get("/ui/login")
            assert login.status_code == 200
        printed = out.getvalue()
        for expected in (f"http://127.0.0.1:{port}/ui", token, "export SAGA_DATABASE__URL="):
            assert expected in printed, printed
    finally:
        stop.set()
        await running
