"""The lifecycle the local launchers share: a server process run from a scratch directory."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, TypeVar

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
    directory removed) on :meth:`stop`, also when start-up fails half-way."""

    def __init__(self, *, startup_timeout: float) -> None:
        self.startup_timeout = startup_timeout
        self.startup_seconds: float | None = None
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

    def _check_prerequisites(self) -> None:
        """Raise before anything is created when the server cannot run here."""
        return None

    @abstractmethod
    async def _launch(self) -> str:
        """Create the scratch directory and process, spawn it, wait until it is ready, and
        return the address clients use."""

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
