"""The lifecycle the local launchers share: a server process run from a scratch directory.

Chaos tests also crash and restart a server: :meth:`ScratchServer.kill` (SIGKILL, as when a
machine or container dies), :meth:`ScratchServer.halt` (the server's own orderly shutdown) and
:meth:`ScratchServer.restart` (the same data directory, the same port, so clients reconnect).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar, TypeVar

from coordinator.devstack.errors import DevStackError, ServiceStartError
from coordinator.devstack.lifecycle import Lifecycle
from coordinator.devstack.process import ManagedProcess, remove_scratch_dir

if TYPE_CHECKING:
    from collections.abc import Awaitable
    from pathlib import Path

__all__ = ["ScratchServer"]

T = TypeVar("T")


class ScratchServer(Lifecycle, ABC):
    """A server started in a scratch directory, ready once a probe answers, and stopped (its
    directory removed) on :meth:`stop`, also when start-up fails half-way.

    A ``restartable`` server (one whose data lives on disk) can also be killed or halted and
    started again on its data directory and address.
    """

    restartable: ClassVar[bool] = False
    """Whether :meth:`restart` can bring the server back on its data (not memory-only)."""

    def __init__(self, *, startup_timeout: float) -> None:
        self.startup_timeout = startup_timeout
        self.startup_seconds: float | None = None
        self.restart_seconds: float | None = None
        """How long the last :meth:`restart` took until the server answered."""
        self._address: str | None = None
        self._workdir: Path | None = None
        self._process: ManagedProcess | None = None

    @property
    def log_path(self) -> Path | None:
        """The server's output, while it runs."""
        return self._process.log_path if self._process else None

    def _started_address(self) -> str:
        if self._address is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._address

    @property
    def is_running(self) -> bool:
        """Whether the server process is alive (False after :meth:`kill` or :meth:`halt`)."""
        return self._process is not None and self._process.is_running()

    def _check_prerequisites(self) -> None:
        """Raise before anything is created when the server cannot run here."""
        return None

    @abstractmethod
    async def _launch(self) -> str:
        """Create the scratch directory and process, spawn it, wait until it is ready, and
        return the address clients use."""

    async def _await_serving(self, address: str) -> None:
        """Wait until the (re)spawned process answers at ``address``; restartable servers
        implement it."""
        raise DevStackError(f"{type(self).__name__} cannot be restarted")

    async def _wait_ready(self, probe: Awaitable[T], description: str, service: str) -> T:
        """Await the readiness ``probe``; a failure carries the tail of the server's log."""
        try:
            return await probe
        except (TimeoutError, DevStackError) as error:
            raise ServiceStartError(
                f"{description} did not start: {error}",
                service=service,
                log_tail=self._process.log_tail() if self._process else "",
            ) from error

    async def start(self) -> None:
        """Start the server (no-op when running)."""
        if self._address is not None:
            return
        began = time.monotonic()
        self._check_prerequisites()
        try:
            self._address = await self._launch()
            self.startup_seconds = time.monotonic() - began
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop the server and remove its directory. Idempotent."""
        self._address = None
        if self._process is not None:
            await self._process.stop()
            self._process = None
        if self._workdir is not None:
            remove_scratch_dir(self._workdir)
            self._workdir = None

    def _restartable_process(self) -> ManagedProcess:
        if not self.restartable:
            raise DevStackError(f"{type(self).__name__} cannot be restarted (no data on disk)")
        self._started_address()  # raises unless started
        assert self._process is not None
        return self._process

    async def kill(self) -> None:
        """Crash the server: SIGKILL its whole process group at once, as when the machine or
        container dies. Its data directory and address stay, for :meth:`restart`."""
        await self._restartable_process().kill()

    async def halt(self) -> None:
        """Stop the server process the orderly way (its own shutdown signal, SIGKILL after the
        stop timeout), keeping its data directory and address for :meth:`restart`."""
        await self._restartable_process().stop()

    async def restart(self) -> None:
        """Start the server again on the same data directory and port; return once it answers.

        A server still running is halted first. Clients reconnect to the same address.

        Raises:
            DevStackError: the server is not started, or cannot be restarted.
            ServiceStartError: it did not answer within ``startup_timeout``.
        """
        process = self._restartable_process()
        address = self._started_address()
        await process.stop()
        began = time.monotonic()
        self._process = process.fresh()
        self._process.spawn()
        await self._await_serving(address)
        self.restart_seconds = time.monotonic() - began
