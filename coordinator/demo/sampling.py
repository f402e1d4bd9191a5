"""Measuring processes: CPU seconds and peak resident memory over a stretch of time.

``saga bench`` watches every process that does a saga's work (each child, the broker,
PostgreSQL with its backends) while a run lasts; :func:`listening_pids` finds a server's
process by the port it listens on, which works the same for a child, a server started here,
or one someone else started on this host.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import psutil

__all__ = ["ProcessSampler", "Usage", "Watched", "listening_pids"]


@dataclass(frozen=True)
class Watched:
    """A process to measure: ``pid`` alone, or with its descendants (``tree``)."""

    role: str
    pid: int | None
    tree: bool = True


@dataclass(frozen=True)
class Usage:
    """CPU seconds and peak resident memory (MiB) per role over one measurement."""

    cpu_s: dict[str, float | None]
    peak_rss_mb: dict[str, float | None]
    rss_growth_mb: dict[str, float | None] = field(default_factory=dict)
    """RSS at the end less RSS at the start (a leak shows as growth over a long run)."""


class ProcessSampler:
    """CPU time and peak RSS of the watched processes between :meth:`start` and :meth:`stop`.

    A tree's CPU time counts every live member plus what exited members left in their
    parents' ``children_*`` times, so PostgreSQL backends that come and go are counted. A
    tree's memory is its root's RSS plus the private part (RSS less shared pages) of each
    descendant: PostgreSQL's shared buffers appear in every backend and count once. Sampling
    runs in a thread, so the event loop that drives the load is never held up.
    """

    def __init__(self, watched: Sequence[Watched], interval_s: float = 0.25) -> None:
        self.interval_s = interval_s
        self._roots: dict[str, tuple[psutil.Process, bool] | None] = {}
        for item in watched:
            self._roots[item.role] = None
            if item.pid is not None:
                with contextlib.suppress(psutil.Error):
                    self._roots[item.role] = (psutil.Process(item.pid), item.tree)
        self._began: dict[str, float | None] = {}
        self._peak: dict[str, float | None] = {}
        self._first: dict[str, float | None] = {}
        self._last: dict[str, float | None] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def roles(self) -> list[str]:
        """The watched roles, in the given order."""
        return list(self._roots)

    def start(self) -> None:
        """Take the starting CPU times and sample memory until :meth:`stop`."""
        self._began = {role: self._cpu(role) for role in self._roots}
        self._peak = {role: None for role in self._roots}
        self._first = {role: self._rss_mb(role) for role in self._roots}
        self._last = dict(self._first)
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, name="bench-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> Usage:
        """Stop sampling; the CPU seconds used since :meth:`start` and the peak RSS."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._sample_once()
        cpu: dict[str, float | None] = {}
        for role, began in self._began.items():
            ended = self._cpu(role)
            cpu[role] = None if began is None or ended is None else max(ended - began, 0.0)
        growth: dict[str, float | None] = {}
        for role, first in self._first.items():
            last = self._last.get(role)
            growth[role] = None if first is None or last is None else last - first
        return Usage(cpu, dict(self._peak), growth)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample_once()

    def _sample_once(self) -> None:
        for role in self._roots:
            rss = self._rss_mb(role)
            if rss is not None:
                self._last[role] = rss
                peak = self._peak.get(role)
                self._peak[role] = rss if peak is None else max(peak, rss)

    def _members(self, role: str) -> tuple[list[psutil.Process], bool] | None:
        entry = self._roots[role]
        if entry is None or not entry[0].is_running():
            return None
        root, tree = entry
        if not tree:
            return [root], False
        try:
            return [root, *root.children(recursive=True)], True
        except psutil.Error:
            return [root], True

    def _cpu(self, role: str) -> float | None:
        found = self._members(role)
        if found is None:
            return None
        members, tree = found
        total = 0.0
        for process in members:
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                total += times.user + times.system
                if tree:
                    total += times.children_user + times.children_system
        return total

    def _rss_mb(self, role: str) -> float | None:
        found = self._members(role)
        if found is None:
            return None
        members, _ = found
        total = 0
        for index, process in enumerate(members):
            with contextlib.suppress(psutil.Error):
                memory = process.memory_info()
                total += memory.rss if index == 0 else max(memory.rss - memory.shared, 0)
        return total / (1024 * 1024)


def listening_pids(ports: Iterable[int]) -> dict[int, int]:
    """The process listening on each of ``ports`` on this host (the topmost one when a server
    and its children share the socket); ports nobody visible listens on are left out."""
    wanted = set(ports)
    holders: dict[int, set[int]] = {}
    with contextlib.suppress(psutil.Error):
        for conn in psutil.net_connections(kind="tcp"):
            port = conn.laddr.port if conn.laddr else None
            if conn.status == psutil.CONN_LISTEN and conn.pid and port in wanted:
                holders.setdefault(port, set()).add(conn.pid)
    found: dict[int, int] = {}
    for port, pids in holders.items():
        for pid in sorted(pids):
            with contextlib.suppress(psutil.Error):
                if psutil.Process(pid).ppid() not in pids:
                    found[port] = pid
                    break
    return found
