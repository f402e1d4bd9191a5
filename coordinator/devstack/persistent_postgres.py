"""A local PostgreSQL whose data directory outlives it: ``saga dev`` keeps its sagas there.

Unlike :class:`~coordinator.devstack.postgres.LocalPostgres`, which runs in a scratch directory
removed on stop, this one runs ``initdb`` only when ``directory`` holds no cluster yet, starts
on what it finds otherwise (after a crash PostgreSQL recovers on its own), and leaves the
directory in place when it stops. Durable settings: ``fsync`` on.
"""

from __future__ import annotations

import asyncio
import os
import signal
import stat
from pathlib import Path

from coordinator.devstack.errors import PrerequisiteMissingError
from coordinator.devstack.ports import LOOPBACK, free_port
from coordinator.devstack.postgres import LocalPostgres, PostgresBinaries, postgres_server_args
from coordinator.devstack.process import ManagedProcess

__all__ = ["PersistentPostgres"]


class PersistentPostgres(LocalPostgres):
    """PostgreSQL on the cluster in ``directory`` (created on first use), on a free port."""

    def __init__(self, directory: Path, binaries: PostgresBinaries | None = None) -> None:
        super().__init__(binaries, fsync=True)
        self.directory = directory

    @property
    def initialized(self) -> bool:
        """Whether ``directory`` holds a cluster already."""
        return (self.directory / "data" / "PG_VERSION").exists()

    async def _launch(self) -> str:
        user = self._os_user()
        workdir = self.directory
        await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
        if user is not None:
            _check_reachable(workdir, user.uid)
        copied = workdir / "pg"
        if not self.initialized:
            bin_dir = await asyncio.to_thread(self._prepare, workdir, user)
        elif copied.is_dir():
            # The binaries copied where the server's account can run them, by the first start.
            bin_dir = next(copied.glob("*/*/bin"))
        else:
            bin_dir = self.binaries.bin_dir
        port = free_port()
        self._process = ManagedProcess(
            "postgres",
            [
                str(bin_dir / "postgres"),
                *("-D", str(workdir / "data")),
                *postgres_server_args(port=port, fsync=True, settings=self.settings),
            ],
            log_path=workdir / "postgres.log",
            cwd=workdir,
            user=user,
            stop_signal=signal.SIGINT,
        )
        self._process.spawn()
        url = f"postgresql+asyncpg://postgres@{LOOPBACK}:{port}/postgres"
        await self._await_serving(url)
        return url

    async def stop(self) -> None:
        """Stop the server; the data directory stays. Idempotent."""
        self._workdir = None  # never removed: it is the point of this class
        await super().stop()


def _check_reachable(directory: Path, uid: int) -> None:
    """Fail clearly when the server's account cannot reach ``directory`` (as root, PostgreSQL
    runs as another account, and a parent such as ``/root`` is closed to it)."""
    for parent in reversed(directory.resolve().parents):
        mode = os.stat(parent)
        if mode.st_uid != uid and not mode.st_mode & stat.S_IXOTH:
            raise PrerequisiteMissingError(
                f"PostgreSQL runs as uid {uid} here, which cannot enter {parent}: choose a data "
                "directory it can reach (e.g. under /var/lib or /var/tmp)"
            )
