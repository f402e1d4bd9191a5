"""Child processes of the dev stack, and the scratch directories they write to.

Every server runs in its own session (``start_new_session=True``) so a Ctrl-C in the terminal
reaches only us, and we stop the whole process group ourselves: first the server's own shutdown
signal, then ``SIGKILL`` for whatever is left. Three nets catch what a ``finally`` misses: an
``atexit`` hook, the parent-death signal (``setpriv --pdeathsig``) that the kernel sends when
the Python process dies without running ``atexit`` (SIGKILL, a crash), and the idempotent
``stop()`` itself.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = [
    "ManagedProcess",
    "OsUser",
    "make_scratch_dir",
    "remove_scratch_dir",
    "unprivileged_user_if_root",
]

_logger = logging.getLogger(__name__)

_LIVE_PROCESSES: set[ManagedProcess] = set()
_LIVE_DIRS: set[Path] = set()
_OWNER_FILE = ".owner-pid"


@dataclass(frozen=True)
class OsUser:
    """An operating-system account to run a child process as."""

    name: str
    uid: int
    gid: int

    @classmethod
    def lookup(cls, name: str) -> OsUser:
        entry = pwd.getpwnam(name)
        return cls(name=name, uid=entry.pw_uid, gid=entry.pw_gid)


def unprivileged_user_if_root(name: str = "nobody") -> OsUser | None:
    """The account to drop to when we run as root (PostgreSQL refuses root), else ``None``."""
    if os.geteuid() != 0:
        return None
    return OsUser.lookup(name)


def make_scratch_dir(prefix: str) -> Path:
    """Create a temporary directory that is removed at exit if nobody removes it before.

    A process killed with SIGKILL runs no ``atexit``: its directories are swept by the next
    caller with the same prefix, once the pid written in ``.owner-pid`` is gone.
    """
    _sweep_stale_scratch_dirs(prefix)
    path = Path(tempfile.mkdtemp(prefix=prefix))
    (path / _OWNER_FILE).write_text(f"{os.getpid()}\n")
    _LIVE_DIRS.add(path)
    return path


def _sweep_stale_scratch_dirs(prefix: str) -> None:
    for path in Path(tempfile.gettempdir()).glob(f"{prefix}*"):
        try:
            pid = int((path / _OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # not ours, or still being created
        if not _pid_alive(pid):
            _logger.debug("removing %s left by dead process %s", path, pid)
            shutil.rmtree(path, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_scratch_dir(path: Path) -> None:
    """Remove a directory made by :func:`make_scratch_dir` (idempotent)."""
    shutil.rmtree(path, ignore_errors=True)
    _LIVE_DIRS.discard(path)


class ManagedProcess:
    """A long-running server process in its own session, with its output in a log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        user: OsUser | None = None,
        stop_signal: signal.Signals = signal.SIGTERM,
        stop_timeout: float = 10.0,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.cwd = cwd
        self.env = dict(env) if env is not None else None
        self.user = user
        self.stop_signal = stop_signal
        self.stop_timeout = stop_timeout
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    def is_running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def exit_code(self) -> int | None:
        return self._popen.poll() if self._popen is not None else None

    def spawn(self) -> None:
        """Start the process (call from the thread that will outlive it: see ``--pdeathsig``)."""
        if self._popen is not None:
            raise RuntimeError(f"{self.name} was already spawned")
        argv = self.argv
        setpriv = shutil.which("setpriv") if sys.platform == "linux" else None
        if setpriv is not None:
            argv = [setpriv, f"--pdeathsig={self.stop_signal.name.removeprefix('SIG')}", *argv]
        with self.log_path.open("ab") as log:
            self._popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env=self.env,
                start_new_session=True,
                user=self.user.uid if self.user else None,
                group=self.user.gid if self.user else None,
                extra_groups=[] if self.user else None,
            )
        _LIVE_PROCESSES.add(self)
        _logger.debug("started %s (pid %s): %s", self.name, self._popen.pid, argv)

    async def stop(self) -> None:
        """Stop gracefully within ``stop_timeout``, then kill the process group (idempotent)."""
        popen = self._popen
        if popen is None:
            return
        if popen.poll() is None:
            self._signal(self.stop_signal)
            await _wait_exit(popen, self.stop_timeout)
        self._kill_group()
        await _wait_exit(popen, 10.0)
        _LIVE_PROCESSES.discard(self)

    async def kill(self) -> None:
        """SIGKILL the whole process group at once, with no shutdown signal first (a crash).

        Idempotent; the log file is kept.
        """
        popen = self._popen
        if popen is None:
            return
        self._kill_group()
        await _wait_exit(popen, 10.0)
        _LIVE_PROCESSES.discard(self)

    def fresh(self) -> ManagedProcess:
        """A new, unspawned process with the same command, log file and settings: the way to
        run a server again after it stopped (a ``ManagedProcess`` spawns once)."""
        return ManagedProcess(
            self.name,
            self.argv,
            log_path=self.log_path,
            cwd=self.cwd,
            env=self.env,
            user=self.user,
            stop_signal=self.stop_signal,
            stop_timeout=self.stop_timeout,
        )

    def stop_now(self, timeout: float = 5.0) -> None:
        """Synchronous :meth:`stop` for ``atexit``, where no event loop runs any more."""
        popen = self._popen
        if popen is None:
            return
        if popen.poll() is None:
            self._signal(self.stop_signal)
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(timeout)
        self._kill_group()
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(5)
        _LIVE_PROCESSES.discard(self)

    def log_tail(self, lines: int = 40) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])

    def _signal(self, sig: signal.Signals) -> None:
        if self._popen is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._popen.pid, sig)

    def _kill_group(self) -> None:
        # The group outlives its leader when the leader forked helpers (PostgreSQL backends).
        if self._popen is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._popen.pid, signal.SIGKILL)


async def _wait_exit(popen: subprocess.Popen[bytes], seconds: float) -> None:
    # Popen has no awaitable exit; a worker thread waits (Popen.wait is thread-safe).
    with contextlib.suppress(subprocess.TimeoutExpired):
        await asyncio.to_thread(popen.wait, seconds)


@atexit.register
def _cleanup_at_exit() -> None:
    for process in list(_LIVE_PROCESSES):
        process.stop_now()
    for path in list(_LIVE_DIRS):
        remove_scratch_dir(path)
